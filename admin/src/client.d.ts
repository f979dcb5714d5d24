// Types of the module served as /admin/client.js: the public typed client (dist/client/index.js),
// the same one any other program uses. Only its types are read here; nothing is compiled from src/.
export * from 'agentry/client'
