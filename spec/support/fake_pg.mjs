#!/usr/bin/env node
// fake_pg.mjs DIR MESSAGE_HEX: a stand-in PostgreSQL server on the unix socket
// DIR/.s.PGSQL.5432 that speaks just enough of the protocol to refuse every connection: it
// declines SSL and GSS encryption requests ('N'), answers the startup message with an
// ErrorResponse whose message is MESSAGE (hex, any bytes), and closes. For the specs
// of what reaches an operator's terminal from a server. Writes DIR/ready once listening.
import net from 'node:net';
import fs from 'node:fs';

const [dir, msgHex] = process.argv.slice(2);
const path = `${dir}/.s.PGSQL.5432`;

function response(type, severity, code, message) {
  const field = (t, v) => Buffer.concat([Buffer.from(t), v, Buffer.from([0])]);
  const body = Buffer.concat([
    field('S', Buffer.from(severity)), field('V', Buffer.from(severity)),
    field('C', Buffer.from(code)), field('M', message), Buffer.from([0]),
  ]);
  const head = Buffer.alloc(5);
  head.write(type, 0);
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

const server = net.createServer((sock) => {
  let buf = Buffer.alloc(0);
  sock.on('error', () => {});
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 8) {
      const len = buf.readInt32BE(0);
      if (buf.length < len) return;
      const code = buf.readInt32BE(4);
      buf = buf.subarray(len);
      if (code === 80877103 || code === 80877104) { sock.write('N'); continue; } // SSL, GSS
      sock.end(response('E', 'FATAL', 'XX000', Buffer.from(msgHex, 'hex')));
      return;
    }
  });
});
server.listen(path, () => fs.writeFileSync(`${dir}/ready`, `${process.pid}\n`));
process.on('SIGTERM', () => { server.close(); process.exit(0); });
