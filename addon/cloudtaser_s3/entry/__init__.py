"""The mitmproxy script, shipped inside the package so an installed wheel has it too."""
