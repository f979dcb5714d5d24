import type { FastifyReply, FastifyRequest } from 'fastify'
import { agentEtag, etagMatches, etagOfJson } from '../../../agents/service.js'
import type { Agent } from '../../schemas/agent.js'

/** Sets the agent's strong ETag on the reply; true when If-None-Match says the client has it already. */
export function withEtag (request: FastifyRequest, reply: FastifyReply, agent: Agent): boolean {
  const etag = agentEtag(agent)
  void reply.header('etag', etag)
  const ifNoneMatch = request.headers['if-none-match']
  return request.method === 'GET' && ifNoneMatch !== undefined && etagMatches(ifNoneMatch, etag)
}

/** The If-Match header, for conditional writes. */
export function ifMatchOf (request: FastifyRequest): string | undefined {
  return request.headers['if-match']
}

/**
 * Answers 200 with the agent and its ETag, serialised once for both: the envelope is sent as text
 * (Fastify passes a string with a JSON content type through unserialised; the route's response
 * schema still documents it). Key order is the schema's, as rawShape builds the agent.
 */
export async function sendAgent (reply: FastifyReply, agent: Agent): Promise<FastifyReply> {
  const json = JSON.stringify(agent)
  void reply.header('etag', etagOfJson(json))
  return await sendJsonText(reply, `{"status":200,"data":${json}}`)
}

/** Sends text that is JSON already. */
export async function sendJsonText (reply: FastifyReply, text: string): Promise<FastifyReply> {
  return await reply.type('application/json; charset=utf-8').send(text)
}
