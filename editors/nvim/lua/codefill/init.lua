--- codefill for Neovim: registers `codefill-lsp` with vim.lsp.config / vim.lsp.enable (Neovim 0.11+), shows its
--- fills as ghost text (vim.lsp.inline_completion on 0.12+, the plugin's own extmarks on 0.11), fills a visual
--- selection with the server's `codefill.fill` command, and keeps the textDocument/completion fallback.
local M = {}

local api = vim.api
local uv = vim.uv or vim.loop

M.NAME = "codefill"
M.FILL_COMMAND = "codefill.fill"
M.PROGRESS_TOKEN = "codefill/load-model"
local TRIGGER_INVOKED, TRIGGER_AUTOMATIC = 1, 2 -- lsp.InlineCompletionTriggerKind

--- The settings the server reads (lsp_server/options.py), sent as initializationOptions and on change.
M.SERVER_KEYS = { "enabled", "modelPath", "device", "steps", "maxTokens", "debounceMs", "languages", "logFile",
  "candidates", "prefetch" }

M.defaults = {
  cmd = { "codefill-lsp" }, -- the server command; found on PATH
  cmd_env = nil, -- extra environment for the server
  filetypes = { "python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust", "java",
    "c", "cpp", "cuda" },
  root_markers = { ".git", "pyproject.toml", "setup.py", "package.json", "go.mod", "Cargo.toml", "pom.xml",
    "build.gradle", "compile_commands.json", "Makefile" },
  settings = {}, -- server settings in the server's camelCase: { modelPath = ..., device = "cuda", steps = 8, ... }
  lsp = {}, -- anything else for vim.lsp.config("codefill", ...), e.g. { on_attach = function(client, bufnr) end }
  -- The position encoding to ask for first: UTF-16, the one every LSP server supports (early codefill-lsp builds
  -- counted UTF-16 whatever they negotiated); false: Neovim's own order (utf-8 first).
  position_encoding = "utf-16",
  -- Ghost text. On the native path (vim.lsp.inline_completion, 0.12+) Neovim decides when to ask and how to draw:
  -- auto_trigger, debounce_ms, ghost_text_pos, hl_group, keymaps.trigger and keymaps.dismiss apply to the plugin's
  -- own ghost text only (0.11, or inline = "plugin").
  inline = "auto", -- "auto": vim.lsp.inline_completion on 0.12+, the plugin's own on 0.11; "native"; "plugin"; false
  auto_trigger = true, -- request fills while typing (TextChangedI, CursorHoldI); false: only with keymaps.trigger
  debounce_ms = 100, -- wait after the last keystroke before asking (the server waits debounceMs more)
  ghost_text_pos = "inline", -- "inline" (pushes the text after the cursor right) or "overlay" (drawn over it)
  hl_group = "CodefillGhost", -- linked to Comment unless defined
  keymaps = {
    accept = "<Tab>", -- insert mode; only while ghost text is shown, else the key does what it did
    trigger = "<M-\\>", -- insert mode: ask now (several candidates)
    next = "<M-]>", -- insert mode: next candidate
    prev = "<M-[>", -- insert mode: previous candidate
    dismiss = "<C-]>", -- insert mode: hide the ghost text
    fill = false, -- visual mode: fill the selection, e.g. "<leader>cf"
  },
  -- The textDocument/completion fallback through vim.lsp.completion: "omnifunc" (<C-x><C-o>), "autotrigger"
  -- (also on the server's trigger characters; it has none today), false (leave Neovim's defaults alone).
  completion = "omnifunc",
}

M.config = vim.deepcopy(M.defaults)

local ns = api.nvim_create_namespace("codefill.ghost")
local group -- augroup
local buffers = {} ---@type table<integer, table> per-buffer ghost state
local server_state = {} ---@type table<integer, {phase: string, message?: string}> per client id
local last = { latency_ms = nil, fill = nil } -- for statusline and tests
local configured = false -- setup() has registered the server with vim.lsp.config
local warned_missing = false -- the "server not found" warning is given once
-- Whether the ":" command line being executed gave its range as '<,'> (set on CmdlineLeave, cleared right after)
local cmdline_visual = nil ---@type boolean?
local cmdline_seq = 0

local function has(version)
  return vim.fn.has("nvim-" .. version) == 1
end

--- Whether this Neovim has vim.lsp.inline_completion (0.12+).
function M.has_native_inline()
  return has("0.12") and vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

local function use_native()
  local mode = M.config.inline
  if mode == "native" then
    return M.has_native_inline()
  end
  return mode == "auto" and M.has_native_inline()
end

local function notify(msg, level)
  vim.notify("codefill: " .. msg, level or vim.log.levels.INFO)
end

--- The codefill client attached to a buffer (default: current), or nil.
function M.client(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  return vim.lsp.get_clients({ bufnr = bufnr, name = M.NAME })[1]
end

--- The server settings as sent: the user's `settings`, only the keys the server knows.
local function server_settings()
  local out = {}
  for _, key in ipairs(M.SERVER_KEYS) do
    if M.config.settings[key] ~= nil then
      out[key] = M.config.settings[key]
    end
  end
  return out
end

-- Text ------------------------------------------------------------------------------------------------------------

--- The server writes a fill with the document's own line breaks (\r\n in a CRLF file, \r in a CR one); buffer lines
--- hold none. Every place that turns the server's text into buffer text goes through here.
local function eol(text)
  return (text:gsub("\r\n?", "\n"))
end

--- The server's text as buffer lines.
function M._lines(text)
  return vim.split(eol(text), "\n", { plain = true })
end

-- Positions ---------------------------------------------------------------------------------------------------

local function get_line(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
end

--- LSP position (in the client's encoding) -> byte column on that line.
function M.byte_col(bufnr, pos, encoding)
  local line = get_line(bufnr, pos.line)
  if encoding == "utf-8" then
    return math.min(pos.character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, encoding, pos.character, false)
  return ok and math.min(col, #line) or #line
end

--- (row, byte col) -> LSP position in the client's encoding (vim.lsp.util.character_offset does the counting).
function M.lsp_position(bufnr, row, col, encoding)
  local line = get_line(bufnr, row)
  col = math.max(0, math.min(col, #line))
  return { line = row, character = vim.lsp.util.character_offset(bufnr, row, col, encoding) }
end

-- Ghost text (the plugin's own, for Neovim 0.11) ---------------------------------------------------------------

local function buf_state(bufnr)
  local st = buffers[bufnr]
  if not st then
    st = { items = {}, index = 0 }
    buffers[bufnr] = st
  end
  return st
end

local function stop_timer(st)
  if st.timer then
    st.timer:stop()
    if not st.timer:is_closing() then
      st.timer:close()
    end
    st.timer = nil
  end
end

local function cancel_request(st)
  st.seq = (st.seq or 0) + 1 -- whatever answer is on its way is stale now
  if st.request_id and st.client_id then
    local client = vim.lsp.get_client_by_id(st.client_id)
    if client then
      pcall(function()
        client:cancel_request(st.request_id)
      end)
    end
  end
  st.request_id = nil
end

--- Hide the ghost text of a buffer (default: current); keeps the candidates for a re-request.
function M.dismiss(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr]
  if not st then
    return
  end
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
  st.shown = nil
end

local function reset(bufnr)
  local st = buffers[bufnr]
  if not st then
    return
  end
  stop_timer(st)
  cancel_request(st)
  M.dismiss(bufnr)
  st.items, st.index = {}, 0
end

local function item_text(item)
  local t = item.insertText
  if type(t) == "table" then
    return eol(t.value or ""), true
  end
  return eol(t or ""), false
end

--- Lay out an item relative to the cursor: what to draw where, and what accepting it replaces (byte columns).
--- Returns nil when the item does not continue from the cursor (stale, or somewhere else).
function M._layout(bufnr, item, encoding, row, col)
  local text, snippet = item_text(item)
  if snippet then
    text = text:gsub("%$%b{}", ""):gsub("%$%d+", "") -- show the placeholders' absence; accept expands it
  end
  local sr, sc, er, ec = row, col, row, col
  if item.range then
    sr, er = item.range.start.line, item.range["end"].line
    sc = M.byte_col(bufnr, item.range.start, encoding)
    ec = M.byte_col(bufnr, item.range["end"], encoding)
  end
  if sr ~= row or sc > col or er < row or (er == row and ec < col) then
    return nil
  end
  local line = get_line(bufnr, row)
  local typed = line:sub(sc + 1, col)
  if text:sub(1, #typed) ~= typed then
    return nil
  end
  local ghost = text:sub(#typed + 1)
  local lines = M._lines(ghost)
  local replaced = er == row and line:sub(col + 1, ec) or line:sub(col + 1)
  local first = lines[1]
  -- An item that ends by re-typing what it replaces after the cursor (an auto-closed bracket) draws only the
  -- new part: the real characters stay where they will be after accepting.
  if #lines == 1 and replaced ~= "" and first:sub(-#replaced) == replaced then
    first = first:sub(1, #first - #replaced)
  end
  return {
    text = text,
    snippet = snippet,
    range = { sr, sc, er, ec },
    first = first,
    rest = { unpack(lines, 2) },
    row = row,
    col = col,
  }
end

local function show(bufnr, st, index)
  M.dismiss(bufnr)
  local item = st.items[index]
  local client = st.client_id and vim.lsp.get_client_by_id(st.client_id)
  if not item or not client or not api.nvim_buf_is_valid(bufnr) then
    return false
  end
  local win = api.nvim_get_current_win()
  if api.nvim_win_get_buf(win) ~= bufnr then
    return false
  end
  local cursor = api.nvim_win_get_cursor(win)
  local layout = M._layout(bufnr, item, client.offset_encoding, cursor[1] - 1, cursor[2])
  if not layout or (layout.first == "" and #layout.rest == 0) then
    return false
  end
  local hl = M.config.hl_group
  local virt_lines = {}
  for _, l in ipairs(layout.rest) do
    table.insert(virt_lines, { { l, hl } })
  end
  if #st.items > 1 then
    local more = (" (%d/%d)"):format(index, #st.items)
    if #virt_lines > 0 then
      table.insert(virt_lines[#virt_lines], { more, "NonText" })
    else
      layout.first_suffix = more
    end
  end
  local virt_text = { { layout.first, hl } }
  if layout.first_suffix then
    table.insert(virt_text, { layout.first_suffix, "NonText" })
  end
  local opts = {
    virt_text = virt_text,
    virt_text_pos = M.config.ghost_text_pos == "overlay" and "overlay" or "inline",
    hl_mode = "combine",
    priority = 200,
  }
  if #virt_lines > 0 then
    opts.virt_lines = virt_lines
  end
  layout.extmark = api.nvim_buf_set_extmark(bufnr, ns, layout.row, layout.col, opts)
  layout.index = index
  st.index = index
  st.shown = layout
  return true
end

--- Ask the server for a fill at the cursor of the current window (invoked: several candidates).
function M.request(bufnr, invoked)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local client = M.client(bufnr)
  if not client or M.config.settings.enabled == false then
    return false
  end
  local win = api.nvim_get_current_win()
  if api.nvim_win_get_buf(win) ~= bufnr then
    return false
  end
  local st = buf_state(bufnr)
  stop_timer(st)
  cancel_request(st)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = invoked and TRIGGER_INVOKED or TRIGGER_AUTOMATIC }
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local cursor = api.nvim_win_get_cursor(win)
  local started = uv.hrtime()
  st.client_id = client.id
  st.requested = { tick = tick, row = cursor[1], col = cursor[2] }
  st.seq = (st.seq or 0) + 1
  local seq = st.seq
  local ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    if st.seq ~= seq then
      return -- a newer request replaced this one
    end
    st.request_id = nil
    st.responses = (st.responses or 0) + 1
    if err then
      st.last_error = err.message or tostring(err)
      return
    end
    if not api.nvim_buf_is_valid(bufnr) or api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return -- the buffer moved on
    end
    local now = api.nvim_win_get_cursor(0)
    if api.nvim_get_current_buf() ~= bufnr or now[1] ~= cursor[1] or now[2] ~= cursor[2] then
      return
    end
    if not api.nvim_get_mode().mode:match("^i") then
      return
    end
    local items = {}
    if type(result) == "table" then
      for _, item in ipairs(result.items or result) do
        if type(item) == "table" and item.insertText ~= nil then
          table.insert(items, item)
        end
      end
    end
    st.items = items
    st.index = 0
    if #items > 0 then
      last.latency_ms = (uv.hrtime() - started) / 1e6
      show(bufnr, st, 1)
    else
      M.dismiss(bufnr)
    end
  end, bufnr)
  if ok then
    st.request_id = id
  end
  return ok
end

local function schedule_request(bufnr)
  local st = buf_state(bufnr)
  stop_timer(st)
  if M.config.settings.enabled == false or vim.fn.pumvisible() == 1 or vim.fn.complete_info({ "mode" }).mode ~= "" then
    return -- stay out of the way of insert-mode completion
  end
  st.timer = uv.new_timer()
  st.timer:start(M.config.debounce_ms, 0, vim.schedule_wrap(function()
    stop_timer(st)
    if api.nvim_get_current_buf() == bufnr and api.nvim_get_mode().mode:match("^i") then
      M.request(bufnr, false)
    end
  end))
end

--- Whether ghost text is shown in a buffer (default: current).
function M.visible(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if use_native() then
    return false -- the native implementation draws its own; see accept()
  end
  local st = buffers[bufnr]
  return st ~= nil and st.shown ~= nil
end

--- Accept the shown fill: replace its range with its text and put the cursor after it. Returns whether there was
--- one. Not from an <expr> mapping directly (it edits the buffer): the accept keymap schedules it.
function M.accept(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr]
  local shown = st and st.shown
  if not shown then
    return false
  end
  local item = st.items[shown.index]
  M.dismiss(bufnr)
  local sr, sc, er, ec = unpack(shown.range)
  if shown.snippet then
    api.nvim_buf_set_text(bufnr, sr, sc, er, ec, { "" })
    api.nvim_win_set_cursor(0, { sr + 1, sc })
    vim.snippet.expand(item_text(item))
  else
    local lines = M._lines(shown.text)
    api.nvim_buf_set_text(bufnr, sr, sc, er, ec, lines)
    local row = sr + #lines - 1
    local col = (#lines == 1 and sc or 0) + #lines[#lines]
    api.nvim_win_set_cursor(0, { row + 1, col })
  end
  st.accepted = (st.accepted or 0) + 1
  if item and item.command then
    local client = vim.lsp.get_client_by_id(st.client_id)
    if client then
      client:exec_cmd(item.command, { bufnr = bufnr })
    end
  end
  return true
end

--- Show the next (or, with a negative step, previous) candidate.
function M.cycle(step, bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if use_native() then
    vim.lsp.inline_completion.select({ bufnr = bufnr, count = step })
    return
  end
  local st = buffers[bufnr]
  if not st or #st.items == 0 then
    return M.request(bufnr, true)
  end
  local n = #st.items
  local index = ((st.index - 1 + step) % n) + 1
  show(bufnr, st, index)
end

-- Fill a selection --------------------------------------------------------------------------------------------

--- Fill a range with the server's `codefill.fill` command, which applies the edit through workspace/applyEdit.
--- start/finish are { row (0-based), byte col } with finish exclusive. on_done(err, result) is optional.
function M.fill_range(bufnr, start, finish, on_done)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local client = M.client(bufnr)
  if not client then
    notify("no codefill server is attached to this buffer", vim.log.levels.WARN)
    return false
  end
  if api.nvim_buf_get_name(bufnr) == "" then
    -- Its URI would be "file://", the same for every unnamed buffer: the server's edit could not find it.
    notify("this buffer has no file name: save it (:w {file}) to fill a selection (ghost text works without)",
      vim.log.levels.WARN)
    return false
  end
  local enc = client.offset_encoding
  local range = {
    start = M.lsp_position(bufnr, start[1], start[2], enc),
    ["end"] = M.lsp_position(bufnr, finish[1], finish[2], enc),
  }
  local uri = vim.uri_from_bufnr(bufnr)
  last.fill = { pending = true, range = range }
  local started = uv.hrtime()
  local tick = api.nvim_buf_get_changedtick(bufnr)
  client:exec_cmd({ title = "Fill selection", command = M.FILL_COMMAND, arguments = { uri, range } }, { bufnr = bufnr },
    function(err, result)
      last.fill = { err = err and (err.message or tostring(err)) or nil, result = result, range = range }
      local here = type(result) == "table" and not result.applied and type(result.text) == "string"
        and type(result.range) == "table"
      if here and api.nvim_buf_is_valid(bufnr) and api.nvim_buf_get_changedtick(bufnr) == tick then
        -- The server did not edit (it does when the client declares workspace/applyEdit, which setup() does unless
        -- `lsp.capabilities` says otherwise) but sent the text and range: apply them here.
        vim.lsp.util.apply_text_edits({ { range = result.range, newText = result.text } }, bufnr, enc)
        last.fill.applied_here = true
        last.latency_ms = (uv.hrtime() - started) / 1e6
      elseif err then
        notify("the fill failed: " .. (err.message or tostring(err)), vim.log.levels.ERROR)
      elseif type(result) ~= "table" then
        notify("no fill (is the model still loading? :checkhealth codefill)", vim.log.levels.WARN)
      elseif not result.applied then
        notify(result.reason or "the fill was not applied", vim.log.levels.WARN)
      else
        last.latency_ms = (uv.hrtime() - started) / 1e6
      end
      if on_done then
        on_done(err, result)
      end
    end)
  return true
end

--- Whether a ":" command line gives its range as the visual area ('<,'> as Neovim inserts it after `:` in visual
--- mode, or `*`).
function M._visual_cmdline(line)
  line = line:gsub("^[%s:]+", "")
  return line:match("^'<%s*,%s*'>") ~= nil or line:match("^%*") ~= nil
end

--- The range of `:[range]CodefillFill`: the last visual selection when the command line said '<,'> (charwise for `v`,
--- whole lines for `V` and blockwise), else the command's lines; no range: the cursor (an empty range).
--- The line numbers of a range cannot tell `:'<,'>` from `:3` (both arrive as line1/line2), and '< '> stay wherever
--- the last selection was; so the command line itself is read when it is left (CmdlineLeave, which also fires for
--- `:` in a mapping), and `opts.visual` (true/false) overrides that, for callers with no command line (vim.cmd).
function M.command_range(opts, bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if not opts or opts.range == 0 then
    local c = api.nvim_win_get_cursor(0)
    return { c[1] - 1, c[2] }, { c[1] - 1, c[2] }
  end
  local visual = opts.visual
  if visual == nil then
    visual = cmdline_visual == true
  end
  if visual then
    local vs, ve = vim.fn.getpos("'<"), vim.fn.getpos("'>")
    if vs[2] > 0 and ve[2] > 0 then
      if vim.fn.visualmode() == "v" then
        local srow, scol = vs[2] - 1, vs[3] - 1
        local erow, ecol = ve[2] - 1, ve[3] - 1
        local line = get_line(bufnr, erow)
        if ecol >= #line then
          ecol = #line -- `$` in visual mode: to the end of the line
        elseif vim.o.selection ~= "exclusive" then
          -- inclusive: past the whole last character (which may be several bytes)
          local char = vim.fn.strpart(line, ecol, 1, true)
          ecol = ecol + math.max(#char, 1)
        end
        return { srow, math.min(scol, #get_line(bufnr, srow)) }, { erow, ecol }
      end
      opts = { line1 = vs[2], line2 = ve[2] }
    end
  end
  local last_line = get_line(bufnr, opts.line2 - 1)
  return { opts.line1 - 1, 0 }, { opts.line2 - 1, #last_line }
end

--- :CodefillFill
function M.fill_command(opts)
  local bufnr = api.nvim_get_current_buf()
  local start, finish = M.command_range(opts, bufnr)
  return M.fill_range(bufnr, start, finish)
end

--- Fill the last visual selection (what keymaps.fill runs; for scripts, where `:'<,'>CodefillFill` through vim.cmd
--- has no command line to read the '<,'> from).
function M.fill_visual()
  return M.fill_command({ range = 2, visual = true })
end

-- Settings, status --------------------------------------------------------------------------------------------

--- Change server settings (camelCase keys) and send them to the running servers.
function M.configure(settings)
  M.config.settings = vim.tbl_extend("force", M.config.settings, settings or {})
  local current = server_settings()
  local payload = { codefill = current }
  if configured then
    -- Also for the servers started later (another root, :CodefillRestart): they read vim.lsp.config.
    vim.lsp.config(M.NAME, { init_options = current, settings = payload })
  end
  for _, client in ipairs(vim.lsp.get_clients({ name = M.NAME })) do
    client.settings = payload
    client:notify("workspace/didChangeConfiguration", { settings = payload })
  end
  if M.config.settings.enabled == false then
    for bufnr in pairs(buffers) do
      reset(bufnr)
    end
  end
end

function M.enable()
  M.configure({ enabled = true })
end

function M.disable()
  M.configure({ enabled = false })
end

function M.toggle()
  M.configure({ enabled = M.config.settings.enabled == false })
end

--- "off", "detached" (no server on this buffer), "starting", "loading", "ready" or "error".
function M.status(bufnr)
  if M.config.settings.enabled == false then
    return "off"
  end
  local client = M.client(bufnr)
  if not client then
    return "detached"
  end
  if not client.initialized then
    return "starting"
  end
  local s = server_state[client.id]
  return s and s.phase or "loading"
end

--- For a statusline: "codefill ready 85 ms", "codefill loading", ...
function M.statusline(bufnr)
  local s = M.status(bufnr)
  if s == "detached" then
    return ""
  end
  if s == "ready" and last.latency_ms then
    return ("codefill %d ms"):format(last.latency_ms)
  end
  return "codefill " .. s
end

--- Restart the servers (after changing `cmd`, or when one misbehaves).
function M.restart()
  local clients = vim.lsp.get_clients({ name = M.NAME })
  for _, client in ipairs(clients) do
    server_state[client.id] = nil
    client:stop()
  end
  vim.wait(3000, function()
    for _, client in ipairs(clients) do
      if not client:is_stopped() then
        return false
      end
    end
    return true
  end, 20)
  vim.lsp.enable(M.NAME, false)
  vim.lsp.enable(M.NAME, true)
end

--- Internals for tests and :checkhealth.
function M._state(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr] or {}
  local shown = st.shown
  return {
    items = st.items or {},
    index = st.index or 0,
    shown = shown and { text = shown.text, first = shown.first, rest = shown.rest, range = shown.range,
      row = shown.row, col = shown.col } or vim.NIL,
    responses = st.responses or 0,
    accepted = st.accepted or 0,
    pending = st.request_id ~= nil,
    last_error = st.last_error,
    latency_ms = last.latency_ms,
    fill = last.fill or vim.NIL,
    native = use_native(),
    server = server_state,
  }
end

-- Wiring ------------------------------------------------------------------------------------------------------

local function map(mode, lhs, rhs, opts)
  if lhs and lhs ~= "" then
    vim.keymap.set(mode, lhs, rhs, vim.tbl_extend("force", { silent = true }, opts or {}))
  end
end

local function termcodes(key)
  return api.nvim_replace_termcodes(key, true, false, true)
end

--- complete-items for codefill's completion items: Neovim takes a plain-text edit's `word` only up to the first
--- space ("return a + b" -> "return"); the whole first line is the fill. Other servers' items are left alone.
function M._convert_completion(item)
  local edit = item.textEdit
  local text = edit and edit.newText or item.insertText
  if item.detail ~= M.NAME or type(text) ~= "string" or item.insertTextFormat == 2 then
    return {}
  end
  return { word = M._lines(text)[1], menu = M.NAME }
end

--- After a codefill completion item is accepted: complete() inserted its first line; add the others.
local function on_complete_done(bufnr, done)
  local lsp_data = type(done) == "table" and vim.tbl_get(done, "user_data", "nvim", "lsp") or nil
  local item = lsp_data and lsp_data.completion_item
  local client = lsp_data and vim.lsp.get_client_by_id(lsp_data.client_id)
  if not item or not client or client.name ~= M.NAME or item.detail ~= M.NAME then
    return
  end
  local text = item.textEdit and item.textEdit.newText or item.insertText
  if type(text) ~= "string" or item.insertTextFormat == 2 then
    return
  end
  local rest = M._lines(text)
  if #rest < 2 then
    return
  end
  table.remove(rest, 1)
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local before = get_line(bufnr, row - 1):sub(1, col)
  if api.nvim_get_current_buf() ~= bufnr or done.word == "" or before:sub(-#done.word) ~= done.word then
    return -- the item's first line is not what was just inserted (removed, or typed over)
  end
  api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col, { "", unpack(rest) })
  api.nvim_win_set_cursor(0, { row + #rest, #rest[#rest] })
end

local function on_attach(client, bufnr)
  local km = M.config.keymaps
  if M.config.completion and vim.lsp.completion and vim.lsp.completion.enable then
    vim.lsp.completion.enable(true, client.id, bufnr, {
      autotrigger = M.config.completion == "autotrigger",
      convert = M._convert_completion,
    })
    if vim.bo[bufnr].omnifunc == "" then
      vim.bo[bufnr].omnifunc = "v:lua.vim.lsp.omnifunc"
    end
    api.nvim_create_autocmd("CompleteDone", {
      group = api.nvim_create_augroup("codefill.complete." .. bufnr, { clear = true }),
      buffer = bufnr,
      callback = function()
        -- Not only "accept": a single match is inserted at once (reason "discard" without 'menuone').
        if vim.v.event.reason ~= "cancel" then
          local done = vim.v.completed_item
          vim.schedule(function() on_complete_done(bufnr, done) end)
        end
      end,
    })
  end
  if M.config.inline == false then
    return
  end
  if use_native() then
    pcall(vim.lsp.inline_completion.enable, true, { bufnr = bufnr })
    if km.accept then
      map("i", km.accept, function()
        if not vim.lsp.inline_completion.get() then
          return termcodes(km.accept)
        end
        return ""
      end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = "codefill: accept the fill" })
    end
    map("i", km.next, function() M.cycle(1, bufnr) end, { buffer = bufnr, desc = "codefill: next fill" })
    map("i", km.prev, function() M.cycle(-1, bufnr) end, { buffer = bufnr, desc = "codefill: previous fill" })
  else
    local aug = api.nvim_create_augroup("codefill.buffer." .. bufnr, { clear = true })
    if M.config.auto_trigger then
      api.nvim_create_autocmd("TextChangedI", {
        group = aug, buffer = bufnr,
        callback = function()
          M.dismiss(bufnr)
          schedule_request(bufnr)
        end,
      })
      api.nvim_create_autocmd("CursorHoldI", {
        group = aug, buffer = bufnr,
        callback = function()
          local st = buf_state(bufnr)
          local c = api.nvim_win_get_cursor(0)
          local r = st.requested
          if st.shown or st.request_id or (r and r.tick == api.nvim_buf_get_changedtick(bufnr)
              and r.row == c[1] and r.col == c[2]) then
            return -- already shown, asked, or answered for this spot
          end
          M.request(bufnr, false)
        end,
      })
    end
    api.nvim_create_autocmd("CursorMovedI", {
      group = aug, buffer = bufnr,
      callback = function()
        local st = buffers[bufnr]
        local c = api.nvim_win_get_cursor(0)
        if st and st.shown and (st.shown.row ~= c[1] - 1 or st.shown.col ~= c[2]) then
          M.dismiss(bufnr)
        end
      end,
    })
    api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
      group = aug, buffer = bufnr,
      callback = function() reset(bufnr) end,
    })
    if km.accept then
      map("i", km.accept, function()
        if M.visible(bufnr) then
          vim.schedule(function() M.accept(bufnr) end)
          return ""
        end
        return termcodes(km.accept)
      end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = "codefill: accept the fill" })
    end
    map("i", km.trigger, function() M.request(bufnr, true) end, { buffer = bufnr, desc = "codefill: fill now" })
    map("i", km.next, function() M.cycle(1, bufnr) end, { buffer = bufnr, desc = "codefill: next fill" })
    map("i", km.prev, function() M.cycle(-1, bufnr) end, { buffer = bufnr, desc = "codefill: previous fill" })
    map("i", km.dismiss, function() reset(bufnr) end, { buffer = bufnr, desc = "codefill: hide the fill" })
  end
  if km.fill then
    -- <Esc> sets '< '> and visualmode(); then fill exactly that, with no command line to interpret.
    map("x", km.fill, "<Esc><Cmd>lua require('codefill').fill_visual()<CR>",
      { buffer = bufnr, desc = "codefill: fill the selection" })
  end
end

local function on_detach(bufnr)
  reset(bufnr)
  buffers[bufnr] = nil
  pcall(api.nvim_del_augroup_by_name, "codefill.buffer." .. bufnr)
  pcall(api.nvim_del_augroup_by_name, "codefill.complete." .. bufnr)
end

--- Set up: every option is optional. See M.defaults.
function M.setup(opts)
  if not has("0.11") then
    notify("needs Neovim 0.11 or newer (vim.lsp.config)", vim.log.levels.ERROR)
    return
  end
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  if opts and opts.cmd then
    M.config.cmd = opts.cmd -- a list: replace, don't merge
  end
  if opts and opts.filetypes then
    M.config.filetypes = opts.filetypes
  end
  local exe = type(M.config.cmd) == "table" and M.config.cmd[1] or nil
  if type(exe) == "string" and vim.fn.executable(exe) == 0 and not warned_missing then
    warned_missing = true
    notify(("server %q not found (not on PATH, or not executable): no fills until it is; see :checkhealth codefill")
      :format(exe), vim.log.levels.WARN)
  end
  if vim.fn.hlexists(M.config.hl_group) == 0 or vim.tbl_isempty(api.nvim_get_hl(0, { name = M.config.hl_group })) then
    api.nvim_set_hl(0, M.config.hl_group, { link = "Comment", default = true })
  end

  local settings = server_settings()
  local lsp_config = vim.tbl_deep_extend("force", {
    cmd = M.config.cmd,
    cmd_env = M.config.cmd_env,
    filetypes = M.config.filetypes,
    root_markers = M.config.root_markers,
    init_options = settings,
    settings = { codefill = settings },
    capabilities = {
      general = M.config.position_encoding and { positionEncodings = { M.config.position_encoding } } or nil,
      textDocument = { inlineCompletion = { dynamicRegistration = false } },
      workspace = { applyEdit = true },
      window = { workDoneProgress = true },
    },
  }, M.config.lsp or {})
  -- Replace (not merge with) what an earlier setup() registered: settings it had and this one lacks must go.
  vim.lsp.config[M.NAME] = lsp_config
  configured = true

  group = api.nvim_create_augroup("codefill", { clear = true })
  api.nvim_create_autocmd("CmdlineLeave", {
    group = group,
    pattern = ":",
    callback = function()
      cmdline_visual = not vim.v.event.abort and M._visual_cmdline(vim.fn.getcmdline())
      cmdline_seq = cmdline_seq + 1
      local seq = cmdline_seq
      -- Only for the command this line runs, which runs before anything scheduled.
      vim.schedule(function()
        if cmdline_seq == seq then
          cmdline_visual = nil
        end
      end)
    end,
  })
  api.nvim_create_autocmd("LspAttach", {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == M.NAME then
        on_attach(client, ev.buf)
      end
    end,
  })
  api.nvim_create_autocmd("LspDetach", {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == M.NAME then
        on_detach(ev.buf)
      end
    end,
  })
  api.nvim_create_autocmd("LspProgress", {
    group = group,
    callback = function(ev)
      local params = ev.data and ev.data.params
      local token = params and params.token
      if type(token) ~= "string" or token:sub(1, #M.PROGRESS_TOKEN) ~= M.PROGRESS_TOKEN then -- also ".../load-model-2"
        return
      end
      local value = params.value or {}
      if value.kind == "begin" or value.kind == "report" then
        server_state[ev.data.client_id] = { phase = "loading", message = value.message }
      elseif value.kind == "end" then
        local failed = value.message and value.message:find("fail")
        server_state[ev.data.client_id] = { phase = failed and "error" or "ready", message = value.message }
      end
    end,
  })
  vim.lsp.enable(M.NAME)
end

return M
