"""Answer scripts for Jakiro*: jakiro's runner with the Jakiro* model loader."""
