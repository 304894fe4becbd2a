// The CAP test service's server: CAP's own (cds.server), plus what the test tier needs around
// it. Nothing here touches OData processing itself: paging, $filter, $batch, ETags (412/428)
// and POST/PATCH semantics are CAP's.
//  - listens on loopback only and prints `FLOWPLANE_CAP_LISTENING <port>` once it does
//    (tests/odata_cap.rs starts it with --port 0 and reads that line);
//  - SAP's CSRF protection, which CAP leaves to the SAP approuter / Gateway in front of it:
//    a GET with `X-CSRF-Token: Fetch` returns a token bound to a session cookie; a write
//    (POST, PUT, PATCH, DELETE, hence every $batch) without the session's token is refused
//    with 403 and `X-CSRF-Token: Required`, as SAP Gateway does;
//  - /test/* routes for the tests: insert and change rows, hold a page, arm a concurrent
//    write, rotate CSRF sessions, and a log of what the service refused and accepted. They carry no
//    record values back except what the test itself wrote.
const cds = require('@sap/cds')
const crypto = require('node:crypto')

const log = []
const sessions = new Map() // session id -> CSRF token
let races = [] // {salesOrder, salesOrderItem, set}: the next single read of that key is followed by this write
const holds = new Map() // $skiptoken -> { promise, resolve }
let pending = Promise.resolve() // creates by armed races, outside the read's transaction
const COOKIE = 'SAP_SESSIONID_FLOWPLANE'

function sessionOf(req) {
  const cookies = req.headers.cookie || ''
  const match = cookies.split(';').map(c => c.trim()).find(c => c.startsWith(COOKIE + '='))
  return match && match.slice(COOKIE.length + 1)
}

cds.on('bootstrap', app => {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, '127.0.0.1', ...rest)
  const express = require('express')

  // A held page: a read of that $skiptoken waits until /test/release, so a test can stop a
  // worker while it is between pages.
  app.use('/sap', (req, res, next) => {
    const held = holds.get(String(req.query.$skiptoken))
    if (req.method !== 'GET' || !held) return next()
    log.push({ kind: 'held', skiptoken: String(req.query.$skiptoken) })
    held.promise.then(() => next())
  })
  // Writes wait for a concurrent create an armed race started (it must land first).
  app.use('/sap', (req, res, next) => {
    if (req.method === 'GET' || req.method === 'HEAD') return next()
    pending.then(() => next(), next)
  })
  app.use('/sap', (req, res, next) => {
    if (req.method === 'GET' || req.method === 'HEAD') {
      if ((req.get('x-csrf-token') || '').toLowerCase() === 'fetch') {
        let sid = sessionOf(req)
        if (!sid || !sessions.has(sid)) {
          sid = crypto.randomUUID()
          sessions.set(sid, crypto.randomBytes(16).toString('base64'))
          res.append('Set-Cookie', `${COOKIE}=${sid}; Path=/; HttpOnly`)
        }
        res.set('X-CSRF-Token', sessions.get(sid))
        log.push({ kind: 'csrf-fetch' })
      }
      return next()
    }
    const sid = sessionOf(req)
    const token = req.get('x-csrf-token')
    if (sid && token && sessions.get(sid) === token) return next()
    log.push({ kind: 'csrf-refused', method: req.method })
    res.status(403).set('X-CSRF-Token', 'Required').type('text/plain').send('CSRF token validation failed')
  })

  const test = express.Router()
  test.use(express.json({ limit: '50mb' }))
  // Rows of SalesOrderItems, inserted as given.
  test.post('/SalesOrderItems', async (req, res) => {
    await INSERT.into('flowplane.test.SalesOrderItems').entries(req.body)
    res.json({ inserted: req.body.length })
  })
  // {keys: [[order, item], ...], set: {...}}: changes those rows.
  test.post('/SalesOrderItems/update', async (req, res) => {
    let n = 0
    for (const [SalesOrder, SalesOrderItem] of req.body.keys)
      n += await UPDATE('flowplane.test.SalesOrderItems').set(req.body.set).where({ SalesOrder, SalesOrderItem })
    res.json({ updated: n })
  })
  // Inserts SalesHistory rows as given (with a fresh etag each).
  test.post('/SalesHistory', async (req, res) => {
    const rows = req.body.map(r => ({ ...r, etag: cds.utils.uuid() }))
    await INSERT.into('flowplane.test.SalesHistory').entries(rows)
    res.json({ inserted: rows.length })
  })
  // {salesOrder, salesOrderItem, set}: the next read of that one entity through the service
  // is followed, before its response leaves, by this write from "someone else" (a new etag;
  // an insert when there was no row): whoever wrote with the ETag that read returned now
  // holds a stale one, and whoever creates the key after that read finds it taken.
  test.post('/race', (req, res) => {
    races.push(req.body)
    res.json({ armed: races.length })
  })
  test.post('/hold', (req, res) => {
    let resolve
    const promise = new Promise(r => (resolve = r))
    holds.set(String(req.body.skiptoken), { promise, resolve })
    res.json({ held: req.body.skiptoken })
  })
  test.post('/release', (req, res) => {
    for (const held of holds.values()) held.resolve()
    holds.clear()
    res.json({ released: true })
  })
  test.post('/csrf/rotate', (req, res) => {
    sessions.clear()
    res.json({ rotated: true })
  })
  test.get('/log', (req, res) => res.json(log))
  app.use('/test', test)
})

cds.on('served', services => {
  const srv = services.SalesHistoryService
  // An armed race strikes right after the read of its key, whatever the read found:
  // someone else updates the row (a new etag), or creates it if there was none.
  // (prepended: CAP's generic READ handler answers without calling next)
  srv.prepend(() => srv.on('READ', 'SalesHistory', async (req, next) => {
    const strike = async () => {
      if (!req.query.SELECT.one) return
      const key = req.params?.at(-1) || req.data
      const race = races.find(r => r.salesOrder === key.salesOrder && r.salesOrderItem === key.salesOrderItem)
      if (!race) return
      races = races.filter(r => r !== race)
      const { salesOrder, salesOrderItem } = race
      const where = { salesOrder, salesOrderItem }
      const changed = await UPDATE('flowplane.test.SalesHistory').set({ ...race.set, etag: cds.utils.uuid() }).where(where)
      log.push({ kind: 'race', salesOrder, salesOrderItem, created: !changed })
      if (changed) return
      // A read that found nothing fails (404) and its transaction is rolled back: create the
      // row in a transaction of its own once the read's is over. The next write to the
      // service waits for it (see `pending` above), so it is there when the reader writes.
      req.on('done', () => {
        pending = pending.then(() =>
          cds.tx(() => INSERT.into('flowplane.test.SalesHistory').entries({ ...race.set, ...where, etag: cds.utils.uuid() }))
        )
      })
    }
    try {
      const result = await next()
      await strike()
      return result
    } catch (e) {
      await strike()
      throw e
    }
  }))
  for (const event of ['CREATE', 'UPDATE'])
    srv.after(event, 'SalesHistory', (_, req) => {
      log.push({ kind: 'write', event, ifMatch: req.headers['if-match'] || null, ifNoneMatch: req.headers['if-none-match'] || null })
    })
  srv.on('error', (err, req) => {
    log.push({ kind: 'refused', status: Number(err.status || err.statusCode || err.code) || null })
  })
})

cds.on('listening', ({ server }) => {
  console.log(`FLOWPLANE_CAP_LISTENING ${server.address().port}`)
})

module.exports = cds.server
