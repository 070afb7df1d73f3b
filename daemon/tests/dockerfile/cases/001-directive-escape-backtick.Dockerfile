# escape=`

FROM scratch
COPY a.txt c:\dir\ `
  more.txt c:\dest\
