// For tests/clients/test_verify_js.py: reads a JSON file {"events": [...],
// "keys": {key_id: secret}} and prints, per event, what the JavaScript
// helper computes, for the Python side to compare with its own.
import { readFileSync } from 'node:fs'
import {
  canonicalBytes,
  crc32,
  crc32c,
  hmacSha256,
  parseJson,
  sha256,
  verifyEvent,
} from '../../clients/js/broadcaster-verify.js'

const text = readFileSync(process.argv[2], 'utf8')
const { events, keys } = parseJson(text)
const plain = JSON.parse(text).events
const [keyId, secret] = Object.entries(keys)[0]
const decoder = new TextDecoder()
const results = []
for (const [i, event] of events.entries()) {
  const bytes = canonicalBytes(event)
  const verdict = await verifyEvent(event, { signingKeys: keys })
  results.push({
    canonical: decoder.decode(bytes),
    plain: decoder.decode(canonicalBytes(plain[i])),
    crc32: crc32(bytes),
    crc32c: crc32c(bytes),
    sha256: await sha256(bytes),
    hmac: await hmacSha256(secret, bytes),
    ok: verdict.ok,
    signature: verdict.signature,
    keyId,
  })
}
process.stdout.write(JSON.stringify(results))
