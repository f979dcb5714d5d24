import { DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, S3ServiceException } from '@aws-sdk/client-s3'
import type { Readable } from 'node:stream'
import type { StorageTarget } from '../config/index.js'
import { IMMUTABLE, type BlobFile, type BlobStore, type ListedFile, type ReadRequest, type StoredFile } from './blob-store.js'

type S3Target = Extract<StorageTarget, { kind: 's3' }>

/** Bodies read whole before they are answered (see S3BlobStore.read); avatars' sizes are mostly below. */
const BUFFERED_BYTES = 1024 * 1024

/** An If-None-Match of one tag, as the bucket can be asked it (weak comparison: a weak tag's strong form). */
function oneTag (header: string | undefined): string | undefined {
  if (header === undefined || header.includes(',')) return undefined
  const tag = header.trim().replace(/^W\//, '')
  return tag.startsWith('"') ? tag : undefined
}

/** Whether a list of entity tags (or `*`) names this one; a weak tag matches only under weak comparison. */
function tagListMatches (header: string, etag: string | undefined, weakComparison: boolean): boolean {
  if (header.trim() === '*') return etag !== undefined
  if (etag === undefined) return false
  return header.split(',').some((raw) => {
    const tag = raw.trim()
    if (tag.startsWith('W/')) return weakComparison && tag.slice(2) === etag
    return tag === etag
  })
}

/** A GET or HEAD's preconditions, in RFC 9110's order (13.2.2): 412, 304, or undefined to answer. */
function judge (request: ReadRequest, etag: string | undefined, lastModified: Date | undefined): 304 | 412 | undefined {
  const seconds = lastModified === undefined ? undefined : Math.floor(lastModified.getTime() / 1000)
  const at = (value: string | undefined): number | undefined => {
    const date = httpDate(value)
    return date === undefined ? undefined : Math.floor(date.getTime() / 1000)
  }
  if (request.ifMatch !== undefined) {
    if (!tagListMatches(request.ifMatch, etag, false)) return 412
  } else {
    const since = at(request.ifUnmodifiedSince)
    if (since !== undefined && seconds !== undefined && seconds > since) return 412
  }
  if (request.ifNoneMatch !== undefined) return tagListMatches(request.ifNoneMatch, etag, true) ? 304 : undefined
  const since = at(request.ifModifiedSince)
  return since !== undefined && seconds !== undefined && seconds <= since ? 304 : undefined
}

function httpDate (value: string | undefined): Date | undefined {
  if (value === undefined) return undefined
  const date = new Date(value)
  return Number.isNaN(date.getTime()) ? undefined : date
}

/** The size in a `Content-Range: bytes *\/size`, if given. */
function sizeOfRange (value: string | undefined): number | undefined {
  const m = value === undefined ? null : /\/(\d+)$/.exec(value)
  return m === null ? undefined : Number(m[1])
}

function statusOf (err: unknown): number | undefined {
  return err instanceof S3ServiceException ? err.$metadata.httpStatusCode : (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode
}

/**
 * Avatar files in an S3-compatible bucket. A PutObject is a single request that either stores the
 * whole object or nothing, so a row never points at a partial file. Credentials come from the
 * AWS SDK's usual chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, instance roles).
 */
export class S3BlobStore implements BlobStore {
  readonly kind = 's3'
  readonly client: S3Client
  readonly location: string

  constructor (private readonly target: S3Target) {
    this.location = `s3://${target.bucket}/${target.prefix}`
    this.client = new S3Client({
      region: target.region,
      endpoint: target.endpoint,
      forcePathStyle: target.forcePathStyle,
      // Some S3-compatible servers store streamed uploads with checksum trailers corrupted.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // The SDK waits for ever by default: a bucket that takes the connection and never answers
      // would hold every request that needs it (and /readyz). Each attempt (the SDK makes three)
      // fails after timeoutMs instead, and the request with a 503 (isStoreUnavailable).
      requestHandler: { connectionTimeout: target.timeoutMs, requestTimeout: target.timeoutMs, throwOnRequestTimeout: true, socketTimeout: target.timeoutMs }
    })
  }

  private objectKey (key: string): string {
    if (key.includes('..') || key.startsWith('/')) throw new Error(`invalid key ${JSON.stringify(key)}`)
    return this.target.prefix === '' ? key : `${this.target.prefix}/${key}`
  }

  async putAll (files: readonly BlobFile[]): Promise<void> {
    await Promise.all(files.map(async (f) => { await this.put(f) }))
  }

  /** One whole object (S3 never shows a partial one); false when the key exists already. */
  private async put ({ key, data, contentType }: BlobFile): Promise<boolean> {
    if (await this.has(key)) return false
    await this.client.send(new PutObjectCommand({
      Bucket: this.target.bucket,
      Key: this.objectKey(key),
      Body: data,
      ContentType: contentType,
      ContentLength: data.length,
      CacheControl: IMMUTABLE
    }))
    return true
  }

  async has (key: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.target.bucket, Key: this.objectKey(key) }))
      return true
    } catch (err) {
      if (statusOf(err) === 404) return false
      throw err
    }
  }

  async delete (key: string, signal?: AbortSignal): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.target.bucket, Key: this.objectKey(key) }), { abortSignal: signal })
  }

  async * list (under = ''): AsyncIterable<ListedFile> {
    const prefix = this.target.prefix === '' ? '' : `${this.target.prefix}/`
    let token: string | undefined
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.target.bucket, Prefix: prefix + under, ContinuationToken: token }))
      for (const o of page.Contents ?? []) {
        if (o.Key !== undefined) yield { key: o.Key.slice(prefix.length), modifiedMs: o.LastModified?.getTime() ?? 0 }
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined
    } while (token !== undefined)
  }

  /** The bucket answers, within STORAGE_TIMEOUT_MS (once: no retries for a readiness probe). */
  async checkReady (): Promise<void> {
    await this.client.send(new HeadBucketCommand({ Bucket: this.target.bucket }), { abortSignal: AbortSignal.timeout(this.target.timeoutMs) })
  }

  async get (key: string): Promise<Buffer | undefined> {
    const file = await this.read(key)
    if (file === undefined || (file.status !== 200 && file.status !== 206) || file.body === undefined) return undefined
    if (Buffer.isBuffer(file.body)) return file.body
    const chunks: Buffer[] = []
    for await (const chunk of file.body as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(chunk))
    return Buffer.concat(chunks)
  }

  /**
   * A GET or HEAD of the object, answered as RFC 9110 has it for the request's conditions and range.
   * The bucket is asked for the range (one range of bytes; several are ignored, and the whole file
   * sent, as the RFC allows) and the revalidation a cache makes (If-None-Match with one tag,
   * If-Modified-Since), which it answers without sending the body; every condition is then judged
   * here too against the object's tag and date, as S3-compatible servers differ in which they
   * judge. A body up to BUFFERED_BYTES is read whole before it is answered: a client that stops
   * reading for a while must not leave the bucket's connection idle past STORAGE_TIMEOUT_MS (the
   * SDK would cut the answer off half way); a larger one is streamed.
   */
  async read (key: string, request: ReadRequest = {}): Promise<StoredFile | undefined> {
    const range = request.range !== undefined && /^bytes=(\d+-\d*|-\d+)$/.test(request.range) ? request.range : undefined
    const input = {
      Bucket: this.target.bucket,
      Key: this.objectKey(key),
      IfNoneMatch: oneTag(request.ifNoneMatch),
      IfModifiedSince: request.ifNoneMatch === undefined ? httpDate(request.ifModifiedSince) : undefined,
      Range: range
    }
    try {
      const res = request.headOnly === true
        ? await this.client.send(new HeadObjectCommand(input))
        : await this.client.send(new GetObjectCommand(input))
      const body = 'Body' in res ? res.Body as (Readable & { transformToByteArray: () => Promise<Uint8Array> }) | undefined : undefined
      const judged = judge(request, res.ETag, res.LastModified)
      if (judged !== undefined) {
        body?.destroy()
        return judged === 304 ? { status: 304, etag: res.ETag, lastModified: res.LastModified } : { status: 412 }
      }
      const buffered = body !== undefined && res.ContentLength !== undefined && res.ContentLength <= BUFFERED_BYTES
      return {
        status: res.ContentRange === undefined || range === undefined ? 200 : 206,
        etag: res.ETag,
        lastModified: res.LastModified,
        contentType: res.ContentType ?? 'application/octet-stream',
        contentLength: res.ContentLength,
        contentRange: range === undefined ? undefined : res.ContentRange,
        body: buffered ? Buffer.from(await body.transformToByteArray()) : body
      }
    } catch (err) {
      const status = statusOf(err)
      const headers = (err as { $response?: { headers?: Record<string, string | undefined> } }).$response?.headers ?? {}
      if (status === 304) {
        // Not modified by the bucket's judgement; a failed If-Match still comes first.
        const etag = headers.etag ?? input.IfNoneMatch
        const lastModified = httpDate(headers['last-modified'])
        return judge({ ...request, ifNoneMatch: undefined, ifModifiedSince: undefined }, etag, lastModified) === 412
          ? { status: 412 }
          : { status: 304, etag, lastModified }
      }
      if (status === 412) return { status: 412 }
      if (status === 416) return { status: 416, size: sizeOfRange(headers['content-range']) }
      if (status === 404) return undefined
      throw err
    }
  }

  close (): void {
    this.client.destroy()
  }
}
