"""The built-in synthetic abdomen: a CT-like phantom generator in the Synapse layout."""
