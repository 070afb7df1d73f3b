# unknowndirective=value
# escape=`
FROM scratch
ENV A=a\ b
