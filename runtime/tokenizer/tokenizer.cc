// placeholder; filled in the next commit
