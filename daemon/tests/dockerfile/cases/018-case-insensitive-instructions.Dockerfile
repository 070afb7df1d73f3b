from scratch As Base
Env A=1
wOrKdIr /app
