--- :checkhealth codefill
local M = {}

function M.check()
  local health = vim.health
  local cf = require("codefill")

  health.start("Neovim")
  local v = vim.version()
  local version = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  if vim.fn.has("nvim-0.11") == 0 then
    health.error("Neovim " .. version .. ": codefill needs 0.11 or newer (vim.lsp.config, vim.lsp.enable)")
  elseif cf.has_native_inline() then
    health.ok("Neovim " .. version .. ": ghost text from vim.lsp.inline_completion")
  else
    health.ok("Neovim " .. version .. ": ghost text from the plugin (vim.lsp.inline_completion needs 0.12)")
  end

  health.start("Server")
  local cmd = cf.config.cmd
  local exe = type(cmd) == "table" and cmd[1] or nil
  if type(cmd) == "function" then
    health.info("cmd is a function; not checked")
  elseif not exe then
    health.error("no server command (setup({ cmd = { 'codefill-lsp' } }))")
  elseif vim.fn.executable(exe) == 1 then
    health.ok(("server executable found: %s (%s)"):format(exe, vim.fn.exepath(exe)))
  else
    health.error(("server executable not found: %s"):format(exe), {
      "pip install codefill (in the Python environment on your PATH)",
      "or setup({ cmd = { '/path/to/codefill-lsp' } })",
    })
  end
  if not vim.lsp.is_enabled or not vim.lsp.is_enabled(cf.NAME) then
    health.warn("the codefill server is not enabled: call require('codefill').setup()")
  end

  health.start("This buffer")
  local bufnr = vim.api.nvim_get_current_buf()
  -- :checkhealth opens its own buffer: look at the buffer the user came from
  local alt = vim.fn.bufnr("#")
  if (vim.bo[bufnr].buftype ~= "" or vim.bo[bufnr].filetype == "checkhealth") and alt > 0 then
    bufnr = alt
  end
  local client = cf.client(bufnr)
  local status = cf.status(bufnr)
  if client then
    local info = client.server_info or {}
    health.ok(("server attached: %s %s (client %d, %s)"):format(info.name or cf.NAME, info.version or "",
      client.id, client.offset_encoding))
    if status == "ready" then
      health.ok("model ready")
    elseif status == "error" then
      health.error("the model failed to load: see :LspLog (or the server's logFile)")
    else
      health.info("status: " .. status)
    end
  else
    local attached = vim.lsp.get_clients({ name = cf.NAME })
    if #attached > 0 then
      health.warn(("server running (client %d) but not attached to this buffer (filetype %q)"):format(
        attached[1].id, vim.bo[bufnr].filetype))
    else
      health.warn(("server not attached to this buffer (filetype %q; filetypes served: %s)"):format(
        vim.bo[bufnr].filetype, table.concat(cf.config.filetypes or {}, ", ")))
    end
  end
  if cf.config.settings.enabled == false then
    health.warn("fills are disabled (:CodefillEnable)")
  end
end

return M
