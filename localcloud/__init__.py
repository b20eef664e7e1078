"""Local cloud: stand-ins that run the synthesized stack on this machine (never imported by the runtime)."""
