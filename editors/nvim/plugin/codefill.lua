-- Commands of the codefill plugin. Nothing starts until require("codefill").setup({...}) is called.
if vim.g.loaded_codefill then
  return
end
vim.g.loaded_codefill = true

local function cf()
  return require("codefill")
end

vim.api.nvim_create_user_command("CodefillFill", function(opts)
  cf().fill_command(opts)
end, { range = true, desc = "codefill: replace the selection (or the lines of the range) with a fill" })

vim.api.nvim_create_user_command("CodefillEnable", function()
  cf().enable()
end, { desc = "codefill: offer fills" })

vim.api.nvim_create_user_command("CodefillDisable", function()
  cf().disable()
end, { desc = "codefill: stop offering fills" })

vim.api.nvim_create_user_command("CodefillToggle", function()
  cf().toggle()
end, { desc = "codefill: toggle fills" })

vim.api.nvim_create_user_command("CodefillStatus", function()
  vim.notify(cf().statusline() ~= "" and cf().statusline() or "codefill: not attached to this buffer")
end, { desc = "codefill: the server's state in this buffer" })

vim.api.nvim_create_user_command("CodefillRestart", function()
  cf().restart()
end, { desc = "codefill: restart the language server" })
