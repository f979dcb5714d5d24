import { AgentryError, type Agent, type AvatarFile, type CreateAgent, type UpdateAgent } from './client.js'
import { byId, show } from './dom.js'

/** What the form asks for: a new agent, or changes to one. */
export type SaveRequest =
  | { kind: 'create', input: CreateAgent, avatarFile?: AvatarFile }
  | { kind: 'update', agent: Agent, input: UpdateAgent, avatarFile?: AvatarFile }

/** The fields the API may name in an error's details, each shown next to its own input. */
const FIELDS = ['name', 'serviceUserId', 'status', 'active', 'avatar'] as const
type Field = typeof FIELDS[number]

const isField = (name: string | undefined): name is Field => (FIELDS as readonly string[]).includes(name ?? '')

/**
 * The create/edit dialog. Validation is the API's: the form sends what was typed and shows each of
 * the API's error details next to the field it names (the rest above the buttons).
 */
export class AgentForm {
  private readonly dialog = byId('agent-dialog', HTMLDialogElement)
  private readonly form = byId('agent-form', HTMLFormElement)
  private readonly title = byId('agent-dialog-title', HTMLHeadingElement)
  private readonly formError = byId('form-error', HTMLParagraphElement)
  private readonly name = byId('f-name', HTMLInputElement)
  private readonly serviceUserId = byId('f-serviceUserId', HTMLInputElement)
  private readonly status = byId('f-status', HTMLSelectElement)
  private readonly active = byId('f-active', HTMLInputElement)
  private readonly avatarUrl = byId('f-avatar-url', HTMLInputElement)
  private readonly avatarFile = byId('f-avatar-file', HTMLInputElement)
  private readonly removeWrap = byId('f-avatar-remove-wrap', HTMLDivElement)
  private readonly remove = byId('f-avatar-remove', HTMLInputElement)
  private readonly preview = byId('f-avatar-preview', HTMLImageElement)
  private readonly save = byId('f-save', HTMLButtonElement)
  private editing: Agent | undefined
  private previewUrl: string | undefined
  private saving = false

  constructor (private readonly onSave: (request: SaveRequest) => Promise<Agent>) {
    this.form.addEventListener('submit', (event) => {
      event.preventDefault()
      void this.submit()
    })
    byId('f-cancel', HTMLButtonElement).addEventListener('click', () => { this.dialog.close() })
    this.dialog.addEventListener('close', () => { this.setPreview(undefined) })
    this.avatarFile.addEventListener('change', () => {
      const file = this.avatarFile.files?.[0]
      if (file !== undefined) this.setPreview(URL.createObjectURL(file), true)
      else this.setPreview(this.editing?.avatar?.url['120x120'])
    })
    this.remove.addEventListener('change', () => {
      this.avatarUrl.disabled = this.remove.checked
      this.avatarFile.disabled = this.remove.checked
      this.preview.classList.toggle('removed', this.remove.checked)
    })
  }

  get isOpen (): boolean {
    return this.dialog.open
  }

  openCreate (): void {
    this.reset(undefined)
    this.title.textContent = 'New agent'
    this.save.textContent = 'Create agent'
    this.dialog.showModal()
    this.name.focus()
  }

  openEdit (agent: Agent): void {
    this.reset(agent)
    this.title.textContent = `Edit ${agent.name}`
    this.save.textContent = 'Save changes'
    this.name.value = agent.name
    this.serviceUserId.value = agent.serviceUserId
    this.status.value = agent.status
    this.active.checked = agent.active
    show(this.removeWrap, agent.avatar !== null)
    this.setPreview(agent.avatar?.url['120x120'])
    this.dialog.showModal()
    this.name.focus()
  }

  close (): void {
    if (this.dialog.open) this.dialog.close()
  }

  private reset (agent: Agent | undefined): void {
    this.editing = agent
    this.form.reset()
    this.avatarUrl.disabled = false
    this.avatarFile.disabled = false
    this.preview.classList.remove('removed')
    show(this.removeWrap, false)
    this.setPreview(undefined)
    this.clearErrors()
  }

  private setPreview (src: string | undefined, isObjectUrl = false): void {
    if (this.previewUrl !== undefined) URL.revokeObjectURL(this.previewUrl)
    this.previewUrl = isObjectUrl ? src : undefined
    if (src === undefined) this.preview.removeAttribute('src')
    else this.preview.src = src
    this.preview.alt = src === undefined ? '' : (isObjectUrl ? 'Chosen avatar' : 'Current avatar')
    show(this.preview, src !== undefined)
  }

  /** The request for what the form says; for an edit, only what changed. */
  private request (): SaveRequest | undefined {
    const file = this.avatarFile.disabled ? undefined : this.avatarFile.files?.[0]
    const avatarFile: AvatarFile | undefined = file === undefined ? undefined : { data: file, filename: file.name }
    const url = this.avatarUrl.disabled ? '' : this.avatarUrl.value.trim()
    const status = this.status.value === 'online' ? 'online' : 'offline'
    const agent = this.editing
    if (agent === undefined) {
      const input: CreateAgent = { name: this.name.value, serviceUserId: this.serviceUserId.value, status, active: this.active.checked }
      if (url !== '') input.avatar = url
      return { kind: 'create', input, avatarFile }
    }
    const input: UpdateAgent = {}
    if (this.name.value !== agent.name) input.name = this.name.value
    if (this.serviceUserId.value !== agent.serviceUserId) input.serviceUserId = this.serviceUserId.value
    if (status !== agent.status) input.status = status
    if (this.active.checked !== agent.active) input.active = this.active.checked
    if (this.remove.checked) input.avatar = null
    else if (url !== '') input.avatar = url
    if (Object.keys(input).length === 0 && avatarFile === undefined) return undefined
    return { kind: 'update', agent, input, avatarFile }
  }

  private async submit (): Promise<void> {
    if (this.saving) return
    this.clearErrors()
    const request = this.request()
    if (request === undefined) { this.dialog.close(); return }
    this.saving = true
    const label = this.save.textContent
    this.save.textContent = 'Saving…'
    this.save.setAttribute('aria-disabled', 'true')
    this.form.setAttribute('aria-busy', 'true')
    try {
      await this.onSave(request)
      this.dialog.close()
    } catch (err) {
      this.showError(err)
    } finally {
      this.saving = false
      this.save.textContent = label
      this.save.removeAttribute('aria-disabled')
      this.form.removeAttribute('aria-busy')
    }
  }

  private input (field: Field): HTMLElement {
    switch (field) {
      case 'name': return this.name
      case 'serviceUserId': return this.serviceUserId
      case 'status': return this.status
      case 'active': return this.active
      case 'avatar': return this.avatarFile.files?.length === 1 ? this.avatarFile : this.avatarUrl
    }
  }

  private clearErrors (): void {
    for (const field of FIELDS) {
      const el = byId(`err-${field}`, HTMLParagraphElement)
      el.textContent = ''
      show(el, false)
    }
    for (const el of this.form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid')
    this.formError.textContent = ''
    show(this.formError, false)
  }

  /** Puts each detail next to its field; what names no field (or the whole error) goes above the buttons. */
  private showError (err: unknown): void {
    const general: string[] = []
    let first: HTMLElement | undefined
    const put = (field: Field, message: string) => {
      const el = byId(`err-${field}`, HTMLParagraphElement)
      el.textContent = el.textContent === '' ? message : `${el.textContent} ${message}`
      show(el, true)
      const input = this.input(field)
      input.setAttribute('aria-invalid', 'true')
      first ??= input
    }
    if (err instanceof AgentryError) {
      const details = err.details ?? []
      for (const d of details) {
        if (isField(d.field)) put(d.field, sentence(d.field, d.message))
        else general.push(d.field === undefined ? d.message : `${d.field} ${d.message}`)
      }
      // Avatar failures (download refused, not an image, …) concern the avatar even without details.
      if (details.length === 0 && err.code.startsWith('avatar_')) put('avatar', err.message)
      else if (details.length === 0 || general.length > 0) general.unshift(err.message)
    } else {
      general.push(err instanceof Error ? `Could not reach the service: ${err.message}` : 'Could not reach the service.')
    }
    if (general.length > 0) {
      this.formError.textContent = general.join(' ')
      show(this.formError, true)
    }
    ;(first ?? this.formError).focus()
  }
}

const LABELS: Record<Field, string> = { name: 'Name', serviceUserId: 'Service user id', status: 'Status', active: 'Active', avatar: 'Avatar' }

/** "must not be empty" → "Name must not be empty."; full sentences from the API stay as they are. */
function sentence (field: Field, message: string): string {
  if (/^[A-Z]/.test(message)) return message
  return `${LABELS[field]} ${message}${/[.!?]$/.test(message) ? '' : '.'}`
}
