-- Argo CD health check for crane.dev/CraneReplicaSet, from its kstatus conditions.
-- Install it in argocd-cm under the key
--   resource.customizations.health.crane.dev_CraneReplicaSet
-- (see README, "Argo CD, Flux and Helm's --wait"). Either sync mode applies the CRD;
-- ServerSideApply=true keeps no 70 KB last-applied-configuration copy of it.
-- Tested by tests/argocd/ (make unit) in Argo CD's health_test.yaml format. Argo CD opens
-- no string library for health checks: only `..` for text here.
--
--   being deleted                                    Progressing
--   not yet seen (no status, observedGeneration -1)  Progressing
--   observedGeneration behind metadata.generation    Progressing
--   Stalled True                                     Degraded, with its reason and message
--   Ready True                                       Healthy
--   otherwise (Reconciling True: scaling, rolling,   Progressing, with Reconciling's reason
--   pods starting)                                   and message
local function find(type)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == type then
      return c
    end
  end
  return nil
end
local function describe(c)
  return (c.reason or c.type) .. ": " .. (c.message or "")
end

if obj.metadata.deletionTimestamp ~= nil then
  return { status = "Progressing", message = "Pending deletion" }
end
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.metadata.generation == nil then
  return hs
end
if obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local stalled = find("Stalled")
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = describe(stalled) }
end
local ready = find("Ready")
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message or "" }
end
local reconciling = find("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
elseif ready ~= nil then
  hs.message = describe(ready)
end
return hs
