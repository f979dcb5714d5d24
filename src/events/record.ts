import { randomUUID } from 'node:crypto'
import type { DbOrTrx } from '../db/index.js'
import { insertEvents, insertEventsAndDeliveries } from '../db/repositories/events.js'
import { answeredByCommit } from '../db/pipelined.js'
import { insertDeliveries, listEndpoints } from '../db/repositories/webhooks.js'
import type { EventRow } from '../db/types.js'
import type { Agent } from '../http/schemas/agent.js'
import type { AgentEvent, Changes, EventType } from './types.js'

export interface NewEvent {
  type: EventType
  agent: Agent
  changes: Changes
}

const COMPARED = ['serviceUserId', 'name', 'status', 'active', 'avatar'] as const

/** What changed between two representations of one agent, field by field. */
export function diffAgents (before: Agent, after: Agent): Changes {
  const changes: Changes = {}
  for (const key of COMPARED) {
    const from = before[key]
    const to = after[key]
    const same = key === 'avatar' ? before.avatar?.id === after.avatar?.id : from === to
    if (!same) changes[key] = { from, to }
  }
  return changes
}

/** The events one write produces: updated for any visible change, status_changed too when status moved. */
export function updateEvents (before: Agent, after: Agent): NewEvent[] {
  const changes = diffAgents(before, after)
  if (Object.keys(changes).length === 0) return []
  const events: NewEvent[] = [{ type: 'agent.updated', agent: after, changes }]
  if (changes.status !== undefined) events.push({ type: 'agent.status_changed', agent: after, changes: { status: changes.status } })
  return events
}

/**
 * Writes events in the caller's transaction, with a pending delivery for every webhook endpoint
 * that wants them: no change without its event, no event without its change, no event unsent.
 * `oneWriter`: the database runs one write transaction at a time (SQLite), so no lock is needed.
 */
export async function recordEvents (trx: DbOrTrx, widgetId: string, events: readonly NewEvent[], now: number, oneWriter = false): Promise<void> {
  if (events.length === 0) return
  // One statement for all of the write's events; the agent's JSON is made once however many there are.
  const agentJson = new Map<Agent, string>()
  const rows = events.map((event) => {
    let json = agentJson.get(event.agent)
    if (json === undefined) agentJson.set(event.agent, json = JSON.stringify(event.agent))
    return {
      widget_id: widgetId,
      type: event.type,
      agent_id: event.agent.id,
      // The same text as JSON.stringify({ agent, changes }).
      payload: `{"agent":${json},"changes":${JSON.stringify(event.changes)}}`,
      created_at: now
    }
  })
  if (!oneWriter) {
    // PostgreSQL: events and deliveries in one statement, which takes the widget's turn first (event
    // ids must become visible in id order); its answer is the commit's (answeredByCommit).
    await answeredByCommit(trx, insertEventsAndDeliveries(trx, widgetId, rows, now * 1000))
    return
  }
  // SQLite runs one write transaction at a time: no turn to take.
  const endpoints = await listEndpoints(trx, widgetId)
  const seqs = await insertEvents(trx, rows)
  if (endpoints.length === 0) return
  const nowMs = now * 1000
  const wanted = endpoints.map((e) => ({ id: e.id, types: JSON.parse(e.event_types) as string[] }))
  await insertDeliveries(trx, events.flatMap((event, i) => wanted
    .filter((e) => e.types.includes('*') || e.types.includes(event.type))
    .map((e) => ({ id: `msg_${randomUUID().replace(/-/g, '')}`, endpoint_id: e.id, event_seq: seqs[i] as number, status: 'pending' as const, next_attempt_at: nowMs, created_at: nowMs, updated_at: nowMs }))))
}

export function toApiEvent (row: EventRow): AgentEvent {
  const data = JSON.parse(row.payload) as AgentEvent['data']
  return { id: String(row.seq), type: row.type as EventType, createdAt: row.created_at, data }
}
