-- Alternates POST /tasks and GET /tasks/{id} of a task created earlier.
local counter = 0
request = function()
  counter = counter + 1
  if counter % 2 == 1 then
    return wrk.format("POST", "/tasks", {["Content-Type"] = "application/json"}, '{"title": "bench"}')
  end
  return wrk.format("GET", "/tasks/1")
end
