-- Unit tests of the plugin's pure parts, in a real Neovim with no server:
--   nvim --headless --clean -l editors/nvim/tests/unit.lua
-- Exits 0 when all pass; prints one line per test.
local root = vim.fn.fnamemodify(debug.getinfo(1, "S").source:sub(2), ":p:h:h")
vim.opt.runtimepath:prepend(root)
local cf = require("codefill")

local failures, count = 0, 0
local function test(name, fn)
  count = count + 1
  local ok, err = pcall(fn)
  if ok then
    io.stdout:write("ok " .. name .. "\n")
  else
    failures = failures + 1
    io.stdout:write("FAIL " .. name .. ": " .. tostring(err) .. "\n")
  end
end

local function eq(a, b, what)
  if not vim.deep_equal(a, b) then
    error(("%s: expected %s, got %s"):format(what or "value", vim.inspect(b), vim.inspect(a)), 2)
  end
end

local function buffer(lines)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.api.nvim_set_current_buf(buf)
  return buf
end

local function range(l1, c1, l2, c2)
  return { start = { line = l1, character = c1 }, ["end"] = { line = l2, character = c2 } }
end

test("byte_col and lsp_position convert UTF-16 columns around multibyte text", function()
  local buf = buffer({ 'x = "é😀" + y' })
  -- bytes: x=0 ' '=1 '='=2 ' '=3 '"'=4 é=5..6 😀=7..10 '"'=11; UTF-16: é=5, 😀=6..7, '"'=8
  eq(cf.byte_col(buf, { line = 0, character = 8 }, "utf-16"), 11, "utf-16 -> byte")
  eq(cf.byte_col(buf, { line = 0, character = 6 }, "utf-32"), 7, "utf-32 -> byte")
  eq(cf.byte_col(buf, { line = 0, character = 11 }, "utf-8"), 11, "utf-8 -> byte")
  eq(cf.byte_col(buf, { line = 0, character = 99 }, "utf-16"), #'x = "é😀" + y', "past the end: clamped")
  eq(cf.lsp_position(buf, 0, 11, "utf-16"), { line = 0, character = 8 }, "byte -> utf-16")
  eq(cf.lsp_position(buf, 0, 11, "utf-32"), { line = 0, character = 7 }, "byte -> utf-32")
  eq(cf.lsp_position(buf, 0, 999, "utf-16"), { line = 0, character = 13 }, "byte past the end -> line end")
end)

test("_layout: an insertion at the cursor draws all of it", function()
  local buf = buffer({ "def f(a):", "    " })
  local l = cf._layout(buf, { insertText = "return a", range = range(1, 4, 1, 4) }, "utf-16", 1, 4)
  eq(l.first, "return a")
  eq(l.rest, {})
  eq(l.range, { 1, 4, 1, 4 })
end)

test("_layout: what was typed of the fill is not drawn again", function()
  local buf = buffer({ "    ret" })
  local l = cf._layout(buf, { insertText = "return a", range = range(0, 4, 0, 7) }, "utf-16", 0, 7)
  eq(l.first, "urn a")
  eq(l.range, { 0, 4, 0, 7 })
end)

test("_layout: an auto-closed bracket it re-types is drawn once", function()
  local buf = buffer({ "print()" })
  local l = cf._layout(buf, { insertText = "a, b)", range = range(0, 6, 0, 7) }, "utf-16", 0, 6)
  eq(l.first, "a, b")
  eq(l.range, { 0, 6, 0, 7 })
end)

test("_layout: several lines go to virt_lines", function()
  local buf = buffer({ "if x:", "    " })
  local l = cf._layout(buf, { insertText = "y = 1\n    z = 2\n" }, "utf-16", 1, 4)
  eq(l.first, "y = 1")
  eq(l.rest, { "    z = 2", "" })
  eq(l.range, { 1, 4, 1, 4 }, "no range: the cursor")
end)

test("_layout: a fill that does not continue from the cursor is not shown", function()
  local buf = buffer({ "    rex" })
  eq(cf._layout(buf, { insertText = "return", range = range(0, 4, 0, 7) }, "utf-16", 0, 7), nil, "typed differs")
  eq(cf._layout(buf, { insertText = "x", range = range(0, 0, 0, 1) }, "utf-16", 0, 7), nil, "ends before")
  eq(cf._layout(buf, { insertText = "x", range = range(1, 0, 1, 0) }, "utf-16", 0, 7), nil, "other line")
end)

test("_layout: UTF-16 range on a line with an emoji", function()
  local buf = buffer({ 's = "😀" + n' })
  local line = 's = "😀" + n'
  -- cursor after "n": byte #line; the range starts at the "n": UTF-16 column 11
  local l = cf._layout(buf, { insertText = "name", range = range(0, 11, 0, 12) }, "utf-16", 0, #line)
  eq(l.first, "ame")
  eq(l.range, { 0, #line - 1, 0, #line })
end)

test("command_range: charwise visual selection, inclusive, multibyte last character", function()
  local buf = buffer({ "a = é + b" })
  vim.cmd("normal! 0fév2l\27") -- select "é +"
  local s, e = cf.command_range({ range = 2, line1 = 1, line2 = 1, visual = true }, buf)
  eq(s, { 0, 4 })
  eq(e, { 0, 8 }, "past the '+'") -- é is 2 bytes: "a = " 4, é 4..5, " " 6, "+" 7
end)

test("command_range: a typed line range is not the old selection on the same line", function()
  local buf = buffer({ "a = é + b", "c" })
  vim.cmd("normal! 0fév2l\27") -- '< '> on line 1, as :1CodefillFill's line1/line2
  local s, e = cf.command_range({ range = 1, line1 = 1, line2 = 1 }, buf) -- no '<,'> command line: lines
  eq({ s, e }, { { 0, 0 }, { 0, #"a = é + b" } })
  vim.cmd("normal! 1GVj\27") -- linewise selection, the command's own lines ignored when visual
  s, e = cf.command_range({ range = 2, line1 = 2, line2 = 2, visual = true }, buf)
  eq({ s, e }, { { 0, 0 }, { 1, 1 } })
end)

test("_visual_cmdline: only a '<,'> (or *) range is the selection", function()
  eq(cf._visual_cmdline("'<,'>CodefillFill"), true)
  eq(cf._visual_cmdline(" :'< , '>CodefillFill"), true)
  eq(cf._visual_cmdline("*CodefillFill"), true)
  eq(cf._visual_cmdline("3CodefillFill"), false)
  eq(cf._visual_cmdline("1,3CodefillFill"), false)
  eq(cf._visual_cmdline("'<CodefillFill"), false)
  eq(cf._visual_cmdline("'a,'bCodefillFill"), false)
end)

test("_lines: CRLF and CR line breaks from the server become buffer lines", function()
  eq(cf._lines("a\r\n    b\r\n"), { "a", "    b", "" })
  eq(cf._lines("a\rb\nc"), { "a", "b", "c" })
  eq(cf._lines("x"), { "x" })
end)

test("_layout and _convert_completion: no \\r from a CRLF document's fill", function()
  local buf = buffer({ "if x:", "    " })
  local l = cf._layout(buf, { insertText = "y = 1\r\n    z = 2\r\n" }, "utf-16", 1, 4)
  eq(l.first, "y = 1")
  eq(l.rest, { "    z = 2", "" })
  eq(l.text, "y = 1\n    z = 2\n")
  eq(cf._convert_completion({ detail = "codefill", textEdit = { newText = "return a\r\n    x" } }),
    { word = "return a", menu = "codefill" })
end)

test("command_range: linewise and no range", function()
  local buf = buffer({ "one", "two", "three" })
  vim.cmd("normal! 1GVj\27")
  local s, e = cf.command_range({ range = 2, line1 = 1, line2 = 2 }, buf)
  eq({ s, e }, { { 0, 0 }, { 1, 3 } })
  vim.api.nvim_win_set_cursor(0, { 3, 2 })
  s, e = cf.command_range({ range = 0 }, buf)
  eq({ s, e }, { { 2, 2 }, { 2, 2 } })
  s, e = cf.command_range({ range = 2, line1 = 2, line2 = 3 }, buf) -- :2,3CodefillFill typed
  eq({ s, e }, { { 1, 0 }, { 2, 5 } })
end)

test("_convert_completion: the whole first line of a codefill item, other servers untouched", function()
  eq(cf._convert_completion({ detail = "codefill", textEdit = { newText = "return a + b\n    x" } }),
    { word = "return a + b", menu = "codefill" })
  eq(cf._convert_completion({ detail = "pyright", textEdit = { newText = "foo bar" } }), {})
  eq(cf._convert_completion({ detail = "codefill", insertTextFormat = 2, insertText = "f($1)" }), {})
end)

test("setup warns once when the server command is not found", function()
  local seen = {}
  local notify = vim.notify
  vim.notify = function(msg, level) table.insert(seen, { msg, level }) end
  local ok, err = pcall(function()
    cf.setup({ cmd = { "codefill-lsp-not-installed-here" } })
    cf.setup({ cmd = { "codefill-lsp-not-installed-here" } })
  end)
  vim.notify = notify
  assert(ok, err)
  eq(#seen, 1, "one warning")
  assert(seen[1][1]:find("codefill%-lsp%-not%-installed%-here") and seen[1][1]:find(":checkhealth codefill"), seen[1][1])
  eq(seen[1][2], vim.log.levels.WARN)
end)

test(":'<,'>CodefillFill typed after a selection is the selection; :1CodefillFill is line 1", function()
  vim.cmd("runtime plugin/codefill.lua")
  cf.setup({ cmd = { "codefill-lsp" } })
  local calls = {}
  local fill_range = cf.fill_range
  cf.fill_range = function(_, s, e) table.insert(calls, { s, e }) return true end
  local ok, err = pcall(function()
    buffer({ "a = é + b", "c" })
    vim.api.nvim_feedkeys(vim.keycode("0fév2l:CodefillFill<CR>"), "xt", false) -- Neovim inserts '<,'>
    vim.api.nvim_feedkeys(vim.keycode(":1CodefillFill<CR>"), "xt", false) -- same line as '< '>
    vim.cmd("1CodefillFill") -- no command line at all
    cf.fill_visual()
  end)
  cf.fill_range = fill_range
  assert(ok, err)
  eq(calls, {
    { { 0, 4 }, { 0, 8 } },
    { { 0, 0 }, { 0, #"a = é + b" } },
    { { 0, 0 }, { 0, #"a = é + b" } },
    { { 0, 4 }, { 0, 8 } },
  })
end)

test("setup registers the server config with vim.lsp.config", function()
  cf.setup({ cmd = { "codefill-lsp", "-v" }, settings = { steps = 8, bogus = 1 } })
  local c = vim.lsp.config.codefill
  eq(c.cmd, { "codefill-lsp", "-v" })
  eq(c.init_options, { steps = 8 }, "only the server's keys")
  eq(c.settings, { codefill = { steps = 8 } })
  eq(c.capabilities.general.positionEncodings, { "utf-16" })
  eq(c.capabilities.textDocument.inlineCompletion, { dynamicRegistration = false })
  eq(vim.lsp.is_enabled("codefill"), true)
  eq(cf.status(), "detached")
  cf.disable()
  eq(cf.status(), "off")
  cf.enable()
end)

test("setup passes candidates; configure keeps vim.lsp.config current for servers started later", function()
  cf.setup({ cmd = { "codefill-lsp" }, settings = { candidates = 1, steps = 8 } })
  eq(vim.lsp.config.codefill.init_options, { candidates = 1, steps = 8 })
  cf.disable()
  local c = vim.lsp.config.codefill
  eq(c.init_options, { candidates = 1, steps = 8, enabled = false })
  eq(c.settings, { codefill = { candidates = 1, steps = 8, enabled = false } })
  eq(c.cmd, { "codefill-lsp" }, "the rest of the config stays")
  cf.configure({ languages = { "python" } })
  cf.configure({ languages = { "go", "rust" } })
  eq(vim.lsp.config.codefill.init_options.languages, { "go", "rust" }, "a list is replaced, not merged")
  cf.enable()
  eq(vim.lsp.config.codefill.settings.codefill.enabled, true)
end)

io.stdout:write(("%d tests, %d failed\n"):format(count, failures))
os.exit(failures == 0 and 0 or 1)
