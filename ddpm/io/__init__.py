"""How the program meets files, screens and hardware (atomic writes, figures, progress, devices)."""
