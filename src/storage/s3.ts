import { DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, S3ServiceException } from '@aws-sdk/client-s3'
import type { Readable } from 'node:stream'
import type { StorageTarget } from '../config/index.js'
import { IMMUTABLE, type BlobFile, type BlobStore, type ListedFile, type StoredFile } from './blob-store.js'

type S3Target = Extract<StorageTarget, { kind: 's3' }>

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
    if (file === undefined || file.notModified) return undefined
    const chunks: Buffer[] = []
    for await (const chunk of file.body as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(chunk))
    return Buffer.concat(chunks)
  }

  async read (key: string, ifNoneMatch?: string): Promise<StoredFile | undefined> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.target.bucket, Key: this.objectKey(key), IfNoneMatch: ifNoneMatch }))
      return {
        notModified: false,
        etag: res.ETag,
        contentType: res.ContentType ?? 'application/octet-stream',
        contentLength: res.ContentLength,
        body: res.Body as Readable
      }
    } catch (err) {
      const status = statusOf(err)
      if (status === 304 && ifNoneMatch !== undefined) return { notModified: true, etag: ifNoneMatch }
      if (status === 404) return undefined
      throw err
    }
  }

  close (): void {
    this.client.destroy()
  }
}
