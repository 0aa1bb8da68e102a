"""Jobs: the record in Redis, its states and every move of it, the Lua that guards the moves, dispatch, reaper, order, prune."""
