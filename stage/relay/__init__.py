"""The relay: publishers in, stage hubs, viewers out. Media stays encoded throughout."""
