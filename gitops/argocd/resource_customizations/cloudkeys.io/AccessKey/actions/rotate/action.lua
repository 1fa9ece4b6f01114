-- Replace the key once: cloudkeys.io/rotate set to a new value (the operator handles each value
-- once and echoes it in status.lastRotateRequest). The current key lives on through its grace
-- period; cloudkeys.io/rotate-grace-period, if set, applies to this rotation.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["cloudkeys.io/rotate"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
