-- Argo CD health check for tally.dev/SegmentSource (same rules as kstatus):
--   Progressing while the operator has not seen the current spec
--     (status.observedGeneration differs from metadata.generation);
--   Degraded when Stalled is True (bad input or configuration: it will not fix itself);
--   Healthy when Ready is True;
--   Progressing otherwise, with the operator's message.
local hs = {status = "Progressing", message = "Waiting for the operator to reconcile the SegmentSource"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration == nil or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local ready = nil
local stalled = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Stalled" then
    stalled = condition
  end
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or stalled.reason or "Stalled"
  return hs
end
if ready ~= nil then
  if ready.status == "True" then
    hs.status = "Healthy"
  end
  hs.message = ready.message or ready.reason or hs.message
end
return hs
