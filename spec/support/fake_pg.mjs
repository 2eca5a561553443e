#!/usr/bin/env node
// fake_pg.mjs DIR MESSAGE_HEX [MODE]: a stand-in PostgreSQL server on the unix socket
// DIR/.s.PGSQL.5432 that speaks just enough of the protocol to answer with an ErrorResponse
// whose message is MESSAGE (hex, any bytes): it declines SSL and GSS encryption requests
// ('N'), then (MODE startup, the default) refuses the connection, or (MODE query) accepts it
// and fails every query. For the specs
// of what reaches an operator's terminal from a server. Writes DIR/ready once listening.
import net from 'node:net';
import fs from 'node:fs';

const [dir, msgHex, mode] = process.argv.slice(2);
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

function message(type, body) {
  const head = Buffer.alloc(5);
  head.write(type, 0);
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}
const int32 = (n) => { const b = Buffer.alloc(4); b.writeInt32BE(n); return b; };
const param = (k, v) => message('S', Buffer.from(`${k}\0${v}\0`));
const ready = message('Z', Buffer.from('I'));

// MODE "startup": the ErrorResponse answers the startup message (a refused connection);
// MODE "query": the connection is accepted (no authentication) and every query, or every
// Sync of the extended protocol, is answered with the ErrorResponse.
const server = net.createServer((sock) => {
  let buf = Buffer.alloc(0);
  let started = false;
  sock.on('error', () => {});
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (!started) {
        if (buf.length < 8) return;
        const len = buf.readInt32BE(0);
        if (buf.length < len) return;
        const code = buf.readInt32BE(4);
        buf = buf.subarray(len);
        if (code === 80877103 || code === 80877104) { sock.write('N'); continue; } // SSL, GSS
        if (mode !== 'query') { sock.end(response('E', 'FATAL', 'XX000', Buffer.from(msgHex, 'hex'))); return; }
        started = true;
        sock.write(Buffer.concat([message('R', int32(0)), param('server_version', '15.0'),
          param('server_encoding', 'UTF8'), param('client_encoding', 'UTF8'),
          param('standard_conforming_strings', 'on'), param('integer_datetimes', 'on'),
          param('DateStyle', 'ISO, MDY'), message('K', Buffer.concat([int32(4242), int32(1)])), ready]));
        continue;
      }
      if (buf.length < 5) return;
      const type = String.fromCharCode(buf[0]);
      const len = buf.readInt32BE(1);
      if (buf.length < len + 1) return;
      buf = buf.subarray(len + 1);
      if (type === 'X') { sock.end(); return; }
      if (type === 'Q' || type === 'S') {
        sock.write(Buffer.concat([response('E', 'ERROR', 'XX000', Buffer.from(msgHex, 'hex')), ready]));
      }
    }
  });
});
server.listen(path, () => fs.writeFileSync(`${dir}/ready`, `${process.pid}\n`));
process.on('SIGTERM', () => { server.close(); process.exit(0); });
