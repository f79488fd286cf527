-- post-4k.lua and report.lua together (wrk takes one script).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "post-4k.lua")
dofile(dir .. "report.lua")
