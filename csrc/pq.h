/*
 * pq.h — libpq, loaded when a PostgreSQL target is first opened (dlopen), so that a process
 * that only ever opens files never maps libpq and what it pulls in (TLS, Kerberos, LDAP):
 * every libpq function the engine calls is a pointer filled by ps_pq_load (pq.c). Include it
 * instead of <libpq-fe.h>.
 */
#ifndef PAIRSTORE_PQ_H
#define PAIRSTORE_PQ_H

#include <libpq-fe.h>

/* Loads libpq once per process: 0, or -1 with why (a static message) set. Thread-safe. */
int ps_pq_load(const char **why);

#define PS_PQ_FUNCS(X) \
  X(PQclear) \
  X(PQgetvalue) \
  X(PQstatus) \
  X(PQgetisnull) \
  X(PQfreemem) \
  X(PQsendQueryParams) \
  X(PQresultErrorField) \
  X(PQerrorMessage) \
  X(PQconsumeInput) \
  X(PQsocket) \
  X(PQresultStatus) \
  X(PQresultErrorMessage) \
  X(PQntuples) \
  X(PQnotifies) \
  X(PQsetErrorVerbosity) \
  X(PQpipelineSync) \
  X(PQpipelineStatus) \
  X(PQgetlength) \
  X(PQflush) \
  X(PQenterPipelineMode) \
  X(PQconninfoParse) \
  X(PQconninfoFree) \
  X(PQtransactionStatus) \
  X(PQsetnonblocking) \
  X(PQsetNoticeProcessor) \
  X(PQsendQuery) \
  X(PQnfields) \
  X(PQisBusy) \
  X(PQgetResult) \
  X(PQfinish) \
  X(PQexitPipelineMode) \
  X(PQconnectionNeedsPassword) \
  X(PQconnectStart) \
  X(PQconnectPoll) \
  X(PQcmdTuples) \
  X(PQhost) \
  X(PQhostaddr) \
  X(PQport) \

#define PS_PQ_DECLARE(f) extern __typeof__(f) *ps_pq_##f;
PS_PQ_FUNCS(PS_PQ_DECLARE)
#undef PS_PQ_DECLARE

#ifndef PS_PQ_NO_MACROS
#define PQclear (*ps_pq_PQclear)
#define PQgetvalue (*ps_pq_PQgetvalue)
#define PQstatus (*ps_pq_PQstatus)
#define PQgetisnull (*ps_pq_PQgetisnull)
#define PQfreemem (*ps_pq_PQfreemem)
#define PQsendQueryParams (*ps_pq_PQsendQueryParams)
#define PQresultErrorField (*ps_pq_PQresultErrorField)
#define PQerrorMessage (*ps_pq_PQerrorMessage)
#define PQconsumeInput (*ps_pq_PQconsumeInput)
#define PQsocket (*ps_pq_PQsocket)
#define PQresultStatus (*ps_pq_PQresultStatus)
#define PQresultErrorMessage (*ps_pq_PQresultErrorMessage)
#define PQntuples (*ps_pq_PQntuples)
#define PQnotifies (*ps_pq_PQnotifies)
#define PQsetErrorVerbosity (*ps_pq_PQsetErrorVerbosity)
#define PQpipelineSync (*ps_pq_PQpipelineSync)
#define PQpipelineStatus (*ps_pq_PQpipelineStatus)
#define PQgetlength (*ps_pq_PQgetlength)
#define PQflush (*ps_pq_PQflush)
#define PQenterPipelineMode (*ps_pq_PQenterPipelineMode)
#define PQconninfoParse (*ps_pq_PQconninfoParse)
#define PQconninfoFree (*ps_pq_PQconninfoFree)
#define PQtransactionStatus (*ps_pq_PQtransactionStatus)
#define PQsetnonblocking (*ps_pq_PQsetnonblocking)
#define PQsetNoticeProcessor (*ps_pq_PQsetNoticeProcessor)
#define PQsendQuery (*ps_pq_PQsendQuery)
#define PQnfields (*ps_pq_PQnfields)
#define PQisBusy (*ps_pq_PQisBusy)
#define PQgetResult (*ps_pq_PQgetResult)
#define PQfinish (*ps_pq_PQfinish)
#define PQexitPipelineMode (*ps_pq_PQexitPipelineMode)
#define PQconnectionNeedsPassword (*ps_pq_PQconnectionNeedsPassword)
#define PQconnectStart (*ps_pq_PQconnectStart)
#define PQconnectPoll (*ps_pq_PQconnectPoll)
#define PQcmdTuples (*ps_pq_PQcmdTuples)
#define PQhost (*ps_pq_PQhost)
#define PQhostaddr (*ps_pq_PQhostaddr)
#define PQport (*ps_pq_PQport)
#endif

#endif
