-- Argo CD health of a flowplane ConnectorBinding. A missing Secret or key (SecretResolved=False)
-- needs a person and is Degraded; an endpoint that does not answer its health check
-- (Reachable=False) may recover by itself and stays Progressing with the probe's message.
local hs = {}

local function condition(status, type)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type then return c end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then return c.reason end
  return fallback
end

local status = obj.status
local generation = obj.metadata.generation or 0
if status == nil or status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = text(reconciling, "Reconciling")
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end

local secret = condition(status, "SecretResolved")
if ready ~= nil and ready.status == "False" and secret ~= nil and secret.status == "False" then
  hs.status = "Degraded"
  hs.message = text(secret, "Credentials Secret not resolved")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the binding to become Ready")
return hs
