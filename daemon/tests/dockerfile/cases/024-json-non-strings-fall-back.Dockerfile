FROM scratch
CMD ["sleep", 10]
ENTRYPOINT ["a"] b
