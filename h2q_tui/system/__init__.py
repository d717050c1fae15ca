"""System readings (CPU, RAM, GPU) collected apart from any rendering."""
