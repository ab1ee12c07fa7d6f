"""The model and its plumbing: loading (Hub or packaged), encode, generate, teacher-forced passes, precision."""
