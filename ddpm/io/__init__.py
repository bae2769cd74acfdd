"""How the program meets files, screens and hardware: writes, figures, images, progress, devices."""
