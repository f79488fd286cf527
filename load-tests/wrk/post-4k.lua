-- wrk script: POST a 4 KiB body on every request.
--   wrk -t1 -c50 -d10s -s load-tests/wrk/post-4k.lua http://127.0.0.1:8080/post
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
