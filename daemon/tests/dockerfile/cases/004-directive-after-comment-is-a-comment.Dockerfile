# About my dockerfile
# escape=`
FROM scratch
ENV A=x\ y
