-- The actions Argo CD offers on a cloudkeys.io AccessKey.
local actions = {}
-- Nothing to replace before the first key is issued.
local issued = obj.status ~= nil and obj.status.accessKeyId ~= nil
actions["rotate"] = {
  ["disabled"] = not issued,
  ["iconClass"] = "fa fa-fw fa-sync",
  ["displayName"] = "Rotate the key",
}
return actions
