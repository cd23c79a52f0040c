// Verify events of the dual-write broadcaster in JavaScript: browsers and
// Node 20 or later, no build step, no dependency.
//
// Every event carries a checksum over its canonical bytes (the UTF-8 JSON of
// event_id, sequence_id, category, event_type, timestamp, key, source and
// payload, keys sorted at every level, no whitespace, non-ASCII kept) and,
// when the broadcaster signs, an HMAC-SHA256 signature over the same bytes.
// This module computes those bytes exactly as the Python side does
// (broadcaster/event_json.py) and checks CRC-32, CRC-32C, SHA-256 and the
// signature. docs/wire-format.md describes the event; README.md shows how a
// browser uses this file with @supabase/realtime-js.
//
// Numbers: JSON.parse turns 1.0 into 1 and rounds integers beyond 2**53, so
// bytes rebuilt from its values could differ from the ones the broadcaster
// hashed. parseJson (and decodeFrame, a drop-in `decode` for realtime-js)
// keep each number's text beside the parsed value; canonicalBytes uses it.
// An event parsed any other way is rebuilt from its values: exact unless it
// holds an integral float (2.0) or an integer beyond 2**53.

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** The fields the canonical bytes hold, in the order a missing one is named. */
export const CANONICAL_FIELDS = Object.freeze([
  'event_id',
  'sequence_id',
  'category',
  'event_type',
  'timestamp',
  'key',
  'source',
  'payload',
])

/** An event that cannot be checked: a field or its checksum is missing or malformed. */
export class EventError extends Error {
  constructor(message) {
    super(message)
    this.name = 'EventError'
  }
}

// -- JSON that keeps its numbers' text ------------------------------------------

// Container (object or array) -> Map of member (key or index) -> number text.
const numberTexts = new WeakMap()

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' }

/**
 * Parse JSON text as JSON.parse does, keeping the text of every number for
 * canonicalBytes. Throws SyntaxError on anything that is not JSON.
 */
export function parseJson(text) {
  let at = 0

  const fail = (what) => {
    throw new SyntaxError(`${what} at position ${at} of the JSON text`)
  }
  const skipSpace = () => {
    for (;;) {
      const c = text.charCodeAt(at)
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) at++
      else return
    }
  }
  const record = (container, member, numberText) => {
    let texts = numberTexts.get(container)
    if (texts === undefined) {
      texts = new Map()
      numberTexts.set(container, texts)
    }
    texts.set(member, numberText)
  }
  const parseString = () => {
    at++ // the opening quote
    let out = ''
    let start = at
    for (;;) {
      const c = text.charCodeAt(at)
      if (c === 0x22) {
        out += text.slice(start, at)
        at++
        return out
      }
      if (c === 0x5c) {
        out += text.slice(start, at)
        const e = text[at + 1]
        if (e === 'u') {
          const hex = text.slice(at + 2, at + 6)
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('bad \\u escape')
          out += String.fromCharCode(parseInt(hex, 16))
          at += 6
        } else if (e !== undefined && e in ESCAPES) {
          out += ESCAPES[e]
          at += 2
        } else {
          fail('bad escape')
        }
        start = at
      } else if (c < 0x20 || Number.isNaN(c)) {
        fail(Number.isNaN(c) ? 'unterminated string' : 'control character in string')
      } else {
        at++
      }
    }
  }
  // Returns [value, numberText or undefined].
  const parseValue = () => {
    skipSpace()
    const c = text[at]
    if (c === '{') {
      at++
      const obj = {}
      skipSpace()
      if (text[at] === '}') {
        at++
        return [obj, undefined]
      }
      for (;;) {
        skipSpace()
        if (text[at] !== '"') fail('expected a string key')
        const key = parseString()
        skipSpace()
        if (text[at] !== ':') fail("expected ':'")
        at++
        const [value, numberText] = parseValue()
        if (key === '__proto__') {
          Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true })
        } else {
          obj[key] = value
        }
        if (numberText !== undefined) record(obj, key, numberText)
        else numberTexts.get(obj)?.delete(key) // a repeated key: the last one counts
        skipSpace()
        if (text[at] === ',') at++
        else if (text[at] === '}') {
          at++
          return [obj, undefined]
        } else fail("expected ',' or '}'")
      }
    }
    if (c === '[') {
      at++
      const arr = []
      skipSpace()
      if (text[at] === ']') {
        at++
        return [arr, undefined]
      }
      for (;;) {
        const [value, numberText] = parseValue()
        if (numberText !== undefined) record(arr, arr.length, numberText)
        arr.push(value)
        skipSpace()
        if (text[at] === ',') at++
        else if (text[at] === ']') {
          at++
          return [arr, undefined]
        } else fail("expected ',' or ']'")
      }
    }
    if (c === '"') return [parseString(), undefined]
    if (text.startsWith('true', at)) {
      at += 4
      return [true, undefined]
    }
    if (text.startsWith('false', at)) {
      at += 5
      return [false, undefined]
    }
    if (text.startsWith('null', at)) {
      at += 4
      return [null, undefined]
    }
    NUMBER.lastIndex = at
    const match = NUMBER.exec(text)
    if (match === null) fail('unexpected character')
    at += match[0].length
    return [Number(match[0]), match[0]]
  }

  const [value] = parseValue()
  skipSpace()
  if (at !== text.length) fail('unexpected text after the JSON value')
  return value
}

// -- canonical bytes ----------------------------------------------------------

// Python orders keys by code point; JavaScript's sort, by UTF-16 unit. They
// differ only between a surrogate (a character beyond U+FFFF) and a unit
// from U+E000 up: moving surrogates above those restores code point order.
function unitRank(unit) {
  if (unit >= 0xd800 && unit <= 0xdfff) return unit + 0x2000
  return unit >= 0xe000 ? unit - 0x800 : unit
}

function byCodePoint(a, b) {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) return unitRank(x) - unitRank(y)
  }
  return a.length - b.length
}

// The shortest digits that read back as `abs` (> 0), and the decimal point's
// position: abs = 0.DIGITS * 10**point. Number's toString picks the same
// digits as Python's repr (the shortest, the closest if several).
function shortestDigits(abs) {
  const text = String(abs)
  const e = text.indexOf('e')
  const mantissa = e < 0 ? text : text.slice(0, e)
  const exponent = e < 0 ? 0 : Number(text.slice(e + 1))
  const dot = mantissa.indexOf('.')
  const whole = dot < 0 ? mantissa : mantissa.slice(0, dot)
  let digits = whole + (dot < 0 ? '' : mantissa.slice(dot + 1))
  let point = whole.length + exponent
  const zeros = digits.length - digits.replace(/^0+/, '').length
  digits = digits.slice(zeros).replace(/0+$/, '')
  point -= zeros
  return [digits, point]
}

/** A float as Python's json (repr) writes it: 1.0, 0.0001, 1e-05, 1e+16. */
export function pythonFloat(x) {
  if (!Number.isFinite(x)) throw new RangeError('NaN and Infinity are not JSON')
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0'
  const sign = x < 0 ? '-' : ''
  const [digits, point] = shortestDigits(Math.abs(x))
  if (point > -4 && point <= 16) {
    if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`
    if (point >= digits.length) return `${sign}${digits}${'0'.repeat(point - digits.length)}.0`
    return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`
  }
  const exponent = point - 1
  const mantissa = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits
  const expSign = exponent < 0 ? '-' : '+'
  return `${sign}${mantissa}e${expSign}${String(Math.abs(exponent)).padStart(2, '0')}`
}

function numberFromText(text) {
  if (/[.eE]/.test(text)) return pythonFloat(Number(text))
  return text === '-0' ? '0' : text
}

function numberFromValue(x) {
  if (Number.isInteger(x)) return Math.abs(x) < 1e21 ? String(x) : BigInt(x).toString()
  return pythonFloat(x)
}

function canonical(value, numberText) {
  if (value === null) return 'null'
  switch (typeof value) {
    case 'string':
      // JSON.stringify escapes exactly what Python's json does (quote,
      // backslash, control characters) for any well-formed string.
      return JSON.stringify(value)
    case 'boolean':
      return value ? 'true' : 'false'
    case 'number':
      return numberText !== undefined ? numberFromText(numberText) : numberFromValue(value)
    case 'bigint':
      return value.toString()
    case 'object': {
      const texts = numberTexts.get(value)
      if (Array.isArray(value)) {
        return `[${value.map((item, i) => canonical(item, texts?.get(i))).join(',')}]`
      }
      const members = Object.keys(value)
        .sort(byCodePoint)
        .map((key) => `${JSON.stringify(key)}:${canonical(value[key], texts?.get(key))}`)
      return `{${members.join(',')}}`
    }
    default:
      throw new EventError(`not a JSON value: ${typeof value}`)
  }
}

/** The canonical bytes of an event object (its other fields ignored). */
export function canonicalBytes(event) {
  if (event === null || typeof event !== 'object') throw new EventError('event is not an object')
  for (const field of CANONICAL_FIELDS) {
    if (!Object.hasOwn(event, field)) throw new EventError(`event lacks field '${field}'`)
  }
  const texts = numberTexts.get(event)
  const members = [...CANONICAL_FIELDS]
    .sort(byCodePoint)
    .map((field) => `"${field}":${canonical(event[field], texts?.get(field))}`)
  return encoder.encode(`{${members.join(',')}}`)
}

// -- checksums and the signature ------------------------------------------------

function crcTable(polynomial) {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? polynomial ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
}

const tables = {}

function crcHex(name, polynomial, bytes) {
  const table = (tables[name] ??= crcTable(polynomial))
  let crc = 0xffffffff
  for (let i = 0; i < bytes.length; i++) crc = table[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8)
  return ((crc ^ 0xffffffff) >>> 0).toString(16).padStart(8, '0')
}

/** CRC-32 (reflected 0x04C11DB7, as zlib's) of bytes, as 8 lowercase hex digits. */
export function crc32(bytes) {
  return crcHex('crc32', 0xedb88320, bytes)
}

/** CRC-32C (Castagnoli) of bytes, as 8 lowercase hex digits. */
export function crc32c(bytes) {
  return crcHex('crc32c', 0x82f63b78, bytes)
}

let subtle
async function webCrypto() {
  if (subtle === undefined) {
    subtle = globalThis.crypto?.subtle
    if (subtle === undefined) {
      // Browsers offer it only to secure pages; Node before 19 under a module.
      if (!globalThis.process?.versions?.node) {
        throw new Error('crypto.subtle is unavailable: SHA-256 and HMAC need https (or localhost)')
      }
      subtle = (await import('node:crypto')).webcrypto.subtle
    }
  }
  return subtle
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('')
}

/** SHA-256 of bytes, as 64 lowercase hex digits. */
export async function sha256(bytes) {
  return hex(await (await webCrypto()).digest('SHA-256', bytes))
}

// A secret's bytes (as hex) -> the key imported from them, once per secret.
const hmacKeys = new Map()

/** HMAC-SHA256 of bytes with a secret (text, used as UTF-8, or bytes), as hex. */
export async function hmacSha256(secret, bytes) {
  const crypto = await webCrypto()
  const raw = typeof secret === 'string' ? encoder.encode(secret) : secret
  const id = hex(raw)
  let key = hmacKeys.get(id)
  if (key === undefined) {
    key = crypto.importKey('raw', raw, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
    hmacKeys.set(id, key)
  }
  return hex(await crypto.sign('HMAC', await key, bytes))
}

const CHECKSUMS = { crc32: async (b) => crc32(b), crc32c: async (b) => crc32c(b), sha256 }

function pyRepr(value) {
  return typeof value === 'string' ? `'${value}'` : JSON.stringify(value)
}

function kindOf(value) {
  if (Array.isArray(value)) return 'list'
  if (typeof value === 'string') return 'str'
  if (typeof value === 'boolean') return 'bool'
  if (typeof value === 'number') return Number.isInteger(value) ? 'int' : 'float'
  return typeof value
}

function sameText(a, b) {
  // Every character compared: the time taken must not tell how much matched.
  let diff = a.length ^ b.length
  for (let i = 0; i < Math.min(a.length, b.length); i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i)
  return diff === 0
}

async function signatureProblem(signature, bytes, keys) {
  if (signature === undefined || signature === null) return 'no signature'
  if (typeof signature !== 'object' || Array.isArray(signature)) {
    return `signature is a ${kindOf(signature)}, not an object`
  }
  const { algorithm, key_id: keyId, value } = signature
  if (algorithm !== 'hmac-sha256') return `unknown signature algorithm ${pyRepr(algorithm ?? null)}`
  if (typeof keyId !== 'string' || typeof value !== 'string') {
    return 'signature lacks a key_id or value string'
  }
  const secret = keys instanceof Map ? keys.get(keyId) : Object.hasOwn(keys, keyId) ? keys[keyId] : undefined
  if (secret === undefined) return `unknown key id ${pyRepr(keyId)}`
  if (!sameText(value, await hmacSha256(secret, bytes))) {
    return `signature does not match (key id ${pyRepr(keyId)})`
  }
  return null
}

/**
 * Check one received event.
 *
 * Resolves to { ok, checksumOk, algorithm, expected, actual, signature }:
 * `actual` is the checksum computed here (what a receipt reports),
 * `signature` null when the signature holds (or no keys were given), else
 * why it does not ('no signature', "unknown key id 'k2'", ...); `ok` is
 * both verdicts together. `options.signingKeys` maps key ids to secrets
 * (an object or a Map): with it, an event must be signed with one of them.
 * Throws EventError for an event without the fields or checksum to check.
 */
export async function verifyEvent(event, options = {}) {
  const checksum = event?.checksum
  if (checksum === null || typeof checksum !== 'object' || Array.isArray(checksum)) {
    throw new EventError('event lacks a checksum object')
  }
  const { algorithm, value: expected } = checksum
  const compute = Object.hasOwn(CHECKSUMS, algorithm) ? CHECKSUMS[algorithm] : undefined
  if (compute === undefined || typeof expected !== 'string') {
    throw new EventError(`event checksum is malformed: ${JSON.stringify(checksum)}`)
  }
  const bytes = canonicalBytes(event)
  const actual = await compute(bytes)
  const checksumOk = actual === expected
  const signature = options.signingKeys ? await signatureProblem(event.signature, bytes, options.signingKeys) : null
  return { ok: checksumOk && signature === null, checksumOk, algorithm, expected, actual, signature }
}

// -- realtime-js ----------------------------------------------------------------

/**
 * A `decode` for @supabase/realtime-js (`new RealtimeClient(url, { decode:
 * decodeFrame, ... })`): reads frames as the client's own serializer does
 * (protocol 2.0.0: JSON arrays, and binary user broadcasts; 1.0.0 JSON
 * objects too) but with parseJson, so that events keep their numbers' text.
 */
export function decodeFrame(raw, callback) {
  if (typeof raw === 'string') {
    const parsed = parseJson(raw)
    if (!Array.isArray(parsed)) return callback(parsed)
    const [join_ref, ref, topic, event, payload] = parsed
    return callback({ join_ref, ref, topic, event, payload })
  }
  const buffer = raw instanceof ArrayBuffer ? raw : raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)
  const view = new DataView(buffer)
  if (buffer.byteLength < 5 || view.getUint8(0) !== 4) return callback({})
  const topicSize = view.getUint8(1)
  const eventSize = view.getUint8(2)
  const metaSize = view.getUint8(3)
  const json = view.getUint8(4) === 1
  let at = 5
  const take = (size) => {
    const part = buffer.slice(at, at + size)
    at += size
    return part
  }
  const topic = decoder.decode(take(topicSize))
  const userEvent = decoder.decode(take(eventSize))
  const meta = metaSize > 0 ? JSON.parse(decoder.decode(take(metaSize))) : undefined
  const body = buffer.slice(at)
  const payload = { type: 'broadcast', event: userEvent, payload: json ? parseJson(decoder.decode(body)) : body }
  if (meta !== undefined) payload.meta = meta
  return callback({ join_ref: null, ref: null, topic, event: 'broadcast', payload })
}
