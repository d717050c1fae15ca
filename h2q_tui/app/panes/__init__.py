"""The dashboard's panes, one module each (with its parts beside it): panes never import
each other; they send messages through the shell."""
