import { randomBytes } from 'node:crypto'
import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3'
import pg from 'pg'

/**
 * The store matrix. With no variables set, tests run on the embedded defaults (SQLite file, local
 * disk). TEST_DATABASE_URL (PostgreSQL) and TEST_S3_ENDPOINT (an S3-compatible server, s3rver here)
 * switch every test server to a fresh database and a fresh bucket of its own, dropped afterwards.
 */
export const storeLeg = (): string =>
  `${process.env.TEST_DATABASE_URL === undefined ? 'sqlite' : 'postgres'}+${process.env.TEST_S3_ENDPOINT === undefined ? 'local' : 's3'}`

export interface ProvisionedStores {
  env: Record<string, string>
  drop: () => Promise<void>
}

function s3Client (endpoint: string): S3Client {
  return new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' })
}

/** Creates a fresh database from an admin URL; drop() removes it, even with connections left. */
export async function createPgDatabase (adminUrl: string, prefix: string): Promise<{ url: string, name: string, drop: () => Promise<void> }> {
  const name = `${prefix}_${randomBytes(5).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${name}`)
  } finally {
    await admin.end()
  }
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return {
    url: url.href,
    name,
    drop: async () => {
      const c = new pg.Client({ connectionString: adminUrl })
      await c.connect()
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await c.end()
      }
    }
  }
}

export async function provisionStores (): Promise<ProvisionedStores> {
  const env: Record<string, string> = {}
  const drops: Array<() => Promise<void>> = []
  const id = randomBytes(5).toString('hex')

  const adminUrl = process.env.TEST_DATABASE_URL
  if (adminUrl !== undefined) {
    const database = await createPgDatabase(adminUrl, 'agentry_test')
    env.DATABASE_URL = database.url
    drops.push(database.drop)
  }

  const endpoint = process.env.TEST_S3_ENDPOINT
  if (endpoint !== undefined) {
    const bucket = `agentry-test-${id}`
    const client = s3Client(endpoint)
    await client.send(new CreateBucketCommand({ Bucket: bucket }))
    env.STORAGE_URL = `s3://${bucket}/avatars`
    env.AWS_ENDPOINT_URL_S3 = endpoint
    env.AWS_REGION = 'us-east-1'
    drops.push(async () => {
      for (;;) {
        const page = await client.send(new ListObjectsV2Command({ Bucket: bucket }))
        const keys = (page.Contents ?? []).flatMap((o) => (o.Key === undefined ? [] : [{ Key: o.Key }]))
        if (keys.length === 0) break
        await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys } }))
      }
      await client.send(new DeleteBucketCommand({ Bucket: bucket }))
      client.destroy()
    })
  }

  return {
    env,
    drop: async () => { for (const d of drops.reverse()) await d() }
  }
}
