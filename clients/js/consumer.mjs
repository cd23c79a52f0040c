// A verifying Realtime consumer in Node, with the official client: subscribes
// to the broadcaster's category channels through @supabase/realtime-js,
// checks every event with broadcaster-verify.js, and posts a receipt per
// event to the service's POST /receipts, so reconciliation counts it.
//
// Configured by the environment (secrets stay out of the process list):
//   SUPABASE_URL            the project (or local server) URL; Realtime at <URL>/realtime/v1
//   SUPABASE_KEY            its API key
//   ADMIN_URL               the service's admin API, e.g. http://127.0.0.1:8080
//   BROADCASTER_TOKEN       a token of scope consumer
//   CONSUMER                the name receipts carry (default realtime-js)
//   CATEGORIES              comma list (default all five)
//   REALTIME_CHANNEL_PREFIX as the service's (default events)
//   REALTIME_PRIVATE_CHANNELS  true: join the channels as private
//   EVENT_SIGNING_KEY, EVENT_SIGNING_KEY_ID  check signatures too
//
// It writes one JSON line per channel subscribed and per batch of receipts
// posted, and stops on SIGTERM or SIGINT after posting what it holds.

import { RealtimeClient } from '@supabase/realtime-js'
import { decodeFrame, EventError, verifyEvent } from './broadcaster-verify.js'

const env = process.env
const required = (name) => {
  const value = env[name]
  if (!value) {
    console.error(`consumer: ${name} is not set`)
    process.exit(2)
  }
  return value
}

const realtimeUrl = `${required('SUPABASE_URL').replace(/\/$/, '')}/realtime/v1`
const apikey = required('SUPABASE_KEY')
const receiptsUrl = `${required('ADMIN_URL').replace(/\/$/, '')}/receipts`
const token = required('BROADCASTER_TOKEN')
const consumer = env.CONSUMER || 'realtime-js'
const prefix = env.REALTIME_CHANNEL_PREFIX || 'events'
const categories = (env.CATEGORIES || 'CRITICAL,PERFORMANCE,USER_ACTIVITY,SYSTEM,DEBUG')
  .split(',')
  .map((c) => c.trim())
  .filter(Boolean)
const isPrivate = env.REALTIME_PRIVATE_CHANNELS === 'true'
const signingKeys = env.EVENT_SIGNING_KEY
  ? { [env.EVENT_SIGNING_KEY_ID || 'default']: env.EVENT_SIGNING_KEY }
  : undefined

const stats = { received: 0, verified: 0, mismatches: 0, malformed: 0, posted: 0, refused: 0 }
const deliveries = new Map() // sequence id -> how many times it came
let pending = []
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`)

async function onBatch(message) {
  const events = message?.payload?.events
  if (!Array.isArray(events)) return
  for (const event of events) {
    stats.received++
    let verdict
    try {
      verdict = await verifyEvent(event, { signingKeys })
    } catch (error) {
      if (!(error instanceof EventError)) throw error
      stats.malformed++
      console.error(`consumer: malformed event: ${error.message}`)
      continue
    }
    if (verdict.ok) stats.verified++
    else {
      stats.mismatches++
      console.error(
        `consumer: event ${event.sequence_id} failed: checksum ${verdict.checksumOk ? 'ok' : 'mismatch'}` +
          (verdict.signature ? `, ${verdict.signature}` : ''),
      )
    }
    const delivery = (deliveries.get(event.sequence_id) ?? 0) + 1
    deliveries.set(event.sequence_id, delivery)
    const receipt = {
      sequence_id: event.sequence_id,
      adapter: 'realtime',
      checksum: verdict.actual,
      consumer,
      received_at: Date.now(),
    }
    if (delivery > 1) receipt.delivery = delivery
    if (!verdict.ok) receipt.verified = false
    pending.push(receipt)
  }
}

async function post() {
  while (pending.length > 0) {
    const batch = pending.slice(0, 10_000)
    let response
    try {
      response = await fetch(receiptsUrl, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(batch),
      })
    } catch (error) {
      console.error(`consumer: POST /receipts: ${error.message}; retrying`)
      return
    }
    if (response.status === 429 || response.status >= 500) return // retried on the next round
    if (!response.ok) {
      stats.refused += batch.length
      console.error(`consumer: POST /receipts refused: ${response.status} ${await response.text()}`)
    } else {
      const outcome = await response.json()
      stats.posted += outcome.accepted
      say({ posted: stats.posted, mismatches: outcome.mismatches, unknown: outcome.unknown.length })
    }
    pending = pending.slice(batch.length)
  }
}

let verifying = Promise.resolve()

// Node 22 and browsers have a WebSocket; Node 20 takes the ws package's.
const transport = globalThis.WebSocket ?? (await import('ws')).default
const client = new RealtimeClient(realtimeUrl, { params: { apikey }, transport, decode: decodeFrame })
for (const category of categories) {
  const name = `${prefix}:${category.toLowerCase()}`
  const channel = client.channel(name, { config: { broadcast: { ack: false, self: false }, private: isPrivate } })
  channel.on('broadcast', { event: 'events' }, (message) => {
    // One batch after another: receipts keep the order events came in.
    verifying = verifying.then(() => onBatch(message)).catch((e) => console.error(`consumer: ${e.stack}`))
  })
  channel.subscribe((status, error) => {
    say({ channel: name, status })
    if (error) console.error(`consumer: ${name}: ${error.message}`)
  })
}

let posting = Promise.resolve()
const timer = setInterval(() => {
  posting = posting.then(post)
}, 100)

async function stop() {
  clearInterval(timer)
  await verifying
  await posting
  await post()
  await client.disconnect()
  say({ done: stats })
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
