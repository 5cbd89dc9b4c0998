"""Small helpers every stage shares: errors, atomic file writes, class names. Imports nothing of ours."""
