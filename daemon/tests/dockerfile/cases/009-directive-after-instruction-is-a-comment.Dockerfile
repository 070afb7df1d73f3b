FROM scratch
# escape=`
ENV A=a\ b
