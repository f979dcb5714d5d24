import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { agentEtag, etagMatches, representationOf } from '../../../agents/service.js'
import type { Agent } from '../../schemas/agent.js'

/** Sets the agent's strong ETag on the reply; true when If-None-Match says the client has it already. */
export function withEtag (request: FastifyRequest, reply: FastifyReply, agent: Agent): boolean {
  return setEtag(request, reply, agentEtag(agent))
}

/** Sets a strong ETag on the reply; true when If-None-Match says the client has it already. */
export function setEtag (request: FastifyRequest, reply: FastifyReply, etag: string): boolean {
  void reply.header('etag', etag)
  const ifNoneMatch = request.headers['if-none-match']
  return (request.method === 'GET' || request.method === 'HEAD') && ifNoneMatch !== undefined && etagMatches(ifNoneMatch, etag)
}

/** The If-Match header, for conditional writes. */
export function ifMatchOf (request: FastifyRequest): string | undefined {
  return request.headers['if-match']
}

/**
 * Answers 200 with the agent and its ETag, serialised once for both (and not again if the write that
 * made the agent serialised it already: see representationOf).
 */
export async function sendAgent (reply: FastifyReply, agent: Agent): Promise<FastifyReply> {
  const { json, etag } = representationOf(agent)
  void reply.header('etag', etag)
  return await sendAgentJson(reply, json)
}

/**
 * Answers 200 with an agent already serialised, in the envelope, as text: Fastify passes a string
 * with a JSON content type through unserialised (the route's response schema still documents it).
 * Key order is the schema's, as rawShape builds the agent.
 */
export async function sendAgentJson (reply: FastifyReply, json: string): Promise<FastifyReply> {
  return await sendJson(reply, agentEnvelope(json))
}

/** Sends JSON made here (text, bytes or a stream of it) past the response serialiser; the route's schema still documents it. */
export async function sendJson (reply: FastifyReply, body: string | Buffer | Readable): Promise<FastifyReply> {
  return await reply.type('application/json; charset=utf-8').send(body)
}

/** An agent's JSON in the success envelope. */
export function agentEnvelope (json: string): string {
  return `{"status":200,"data":${json}}`
}
