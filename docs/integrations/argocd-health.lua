-- Argo CD health check for crane.dev/CraneReplicaSet, from its kstatus conditions.
-- Install it in argocd-cm under the key
--   resource.customizations.health.crane.dev_CraneReplicaSet
-- (see README, "Argo CD, Flux and Helm's --wait"). Argo CD also needs the sync option
-- ServerSideApply=true for this CRD's objects: the CRD is too large for client-side apply.
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.metadata.generation == nil then
  return hs
end
if obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local function find(type)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == type then
      return c
    end
  end
  return nil
end
local stalled = find("Stalled")
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = stalled.reason .. ": " .. (stalled.message or "") }
end
local ready = find("Ready")
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message or "" }
end
local reconciling = find("Reconciling")
if reconciling ~= nil then
  hs.message = reconciling.reason .. ": " .. (reconciling.message or "")
end
return hs
