"""Add-on logic that needs no bpy: protocol, clients, jobs, image math."""
