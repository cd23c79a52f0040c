// For tests/clients/test_realtime_js.py: two realtime-js clients on a private
// channel of the local server. One sends broadcasts (realtime-js frames them
// in binary) with acknowledgements, the other receives them; then the
// receiver sets an anonymous user's token and its channel is shut down.
// Prints four JSON lines: {"sent"}, {"received"}, {"acks"}, {"system"}.
import { createRequire } from 'node:module'

// The packages clients/js installed (this file lives outside that package).
const require = createRequire(new URL('../../clients/js/package.json', import.meta.url))
const { RealtimeClient } = require('@supabase/realtime-js')
const WebSocket = require('ws')

const url = `${process.env.SUPABASE_URL}/realtime/v1`
const apikey = process.env.SUPABASE_KEY
const transport = globalThis.WebSocket ?? WebSocket
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`)
const timeout = setTimeout(() => {
  console.error('roundtrip: timed out')
  process.exit(1)
}, 20_000)

const subscribed = (channel) =>
  new Promise((resolve, reject) =>
    channel.subscribe((status, error) => {
      if (status === 'SUBSCRIBED') resolve()
      else if (status !== 'CLOSED') reject(new Error(`${status}: ${error?.message}`))
    }),
  )

const sent = [1, 2, 3].map((n) => ({ events: [{ sequence_id: n, payload: { amount: n + 0.5, note: 'é' } }] }))
const received = []
let gotAll
const allReceived = new Promise((resolve) => (gotAll = resolve))
let shutDown
const system = new Promise((resolve) => (shutDown = resolve))

const receiver = new RealtimeClient(url, { params: { apikey }, transport })
const inbox = receiver.channel('events:critical', { config: { private: true } })
inbox.on('broadcast', { event: 'events' }, ({ payload }) => {
  received.push(payload)
  if (received.length === sent.length) gotAll()
})
inbox.on('system', {}, (payload) => {
  if (payload.status === 'error') shutDown(payload)
})
const sender = new RealtimeClient(url, { params: { apikey }, transport })
const outbox = sender.channel('events:critical', { config: { private: true, broadcast: { ack: true } } })

await subscribed(inbox)
await subscribed(outbox)
const acks = []
for (const payload of sent) acks.push(await outbox.send({ type: 'broadcast', event: 'events', payload }))
await allReceived
say({ sent })
say({ received })
say({ acks })
await receiver.setAuth(process.env.ANON_TOKEN)
say({ system: await system })
clearTimeout(timeout)
await receiver.disconnect()
await sender.disconnect()
process.exit(0)
