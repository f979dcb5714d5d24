import type { FastifyReply, FastifyRequest } from 'fastify'
import { agentEtag, etagMatches } from '../../../agents/service.js'
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
