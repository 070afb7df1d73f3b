#	  eScApE = `
# SYNTAX=docker/dockerfile:1
FROM scratch
ENV A=x` y
