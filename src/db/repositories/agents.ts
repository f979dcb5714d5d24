import type { DbOrTrx } from '../index.js'
import type { AgentRow, AgentRowUpdate, NewAgentRow } from '../types.js'

export async function findAgent (db: DbOrTrx, widgetId: string, id: string): Promise<AgentRow | undefined> {
  return await db.selectFrom('agents').selectAll()
    .where('widget_id', '=', widgetId)
    .where('id', '=', id)
    .executeTakeFirst()
}

export async function findAgentByServiceUserId (db: DbOrTrx, widgetId: string, serviceUserId: string): Promise<AgentRow | undefined> {
  return await db.selectFrom('agents').selectAll()
    .where('widget_id', '=', widgetId)
    .where('service_user_id', '=', serviceUserId)
    .executeTakeFirst()
}

/** The widget's agents, newest first; agents created in the same second newest first too. */
export async function listAgents (db: DbOrTrx, widgetId: string): Promise<AgentRow[]> {
  return await db.selectFrom('agents').selectAll()
    .where('widget_id', '=', widgetId)
    .orderBy('created_at', 'desc')
    .orderBy('seq', 'desc')
    .execute()
}

export async function insertAgent (db: DbOrTrx, row: NewAgentRow): Promise<AgentRow> {
  return await db.insertInto('agents').values(row).returningAll().executeTakeFirstOrThrow()
}

export async function updateAgent (db: DbOrTrx, widgetId: string, id: string, changes: AgentRowUpdate): Promise<AgentRow | undefined> {
  return await db.updateTable('agents').set(changes)
    .where('widget_id', '=', widgetId)
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirst()
}
