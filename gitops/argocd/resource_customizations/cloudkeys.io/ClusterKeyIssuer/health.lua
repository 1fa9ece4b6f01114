-- Argo CD health of a cloudkeys.io issuer (KeyIssuer, ClusterKeyIssuer), from the conditions the
-- operator writes: Ready (reason says why not), and the kstatus conditions Stalled and Reconciling.
local hs = {}

local function condition(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the credentials"
  return hs
end

local conditions = obj.status.conditions
-- A status written for an older spec says nothing about the current one.
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local stalled = condition(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. stalled.message
  return hs
end

local reconciling = condition(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.message
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
if ready ~= nil and ready.status == "False" then
  -- Failing, and checked again by the operator with backoff (a provider that does not answer).
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. ready.message
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the operator to check the credentials"
return hs
