# `cmake --install build [--prefix DIR]` and the Debian packages (docs/install.md).
#
# Components (one .deb each):
#   server  tessera-server, tessera-coordinator, the tessera CLI, their systemd units
#   worker  tessera-worker (and libtessera_cuda when built with CUDA), its unit
#   dev     libtessera_client, its headers, the CMake package (find_package(Tessera))
#   python  the `tessera` Python package with its native module
include(CMakePackageConfigHelpers)

install(TARGETS tessera-server tessera-coordinator tessera-serving tessera
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT server)
install(TARGETS tessera-worker RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT worker)
if(TESSERA_HAVE_CUDA)
  # tessera-worker dlopens it by name; its RUNPATH points at the private directory.
  install(TARGETS tessera_cuda LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/tessera
    COMPONENT worker)
  set_target_properties(tessera-worker PROPERTIES
    INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}/tessera")
endif()

# The systemd units of deploy/systemd with ExecStart pointing at the installed binaries. Written
# at install time, so that --prefix and the packages' /usr are what the units name.
set(TESSERA_UNIT_DIR "lib/systemd/system" CACHE STRING
  "Where the systemd units go, relative to the install prefix")
foreach(unit_component
    "tessera-coordinator.service|server" "tessera-server@.service|server"
    "tessera-serving@.service|server" "tessera-worker@.service|worker")
  string(REPLACE "|" ";" pair "${unit_component}")
  list(GET pair 0 unit)
  list(GET pair 1 component)
  install(CODE "
    file(READ \"${PROJECT_SOURCE_DIR}/deploy/systemd/${unit}\" text)
    string(REPLACE \"/usr/local/bin/\" \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/\" text \"\${text}\")
    set(out \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${TESSERA_UNIT_DIR}/${unit}\")
    message(STATUS \"Installing: \${out}\")
    file(WRITE \"\${out}\" \"\${text}\")" COMPONENT ${component})
endforeach()
install(FILES deploy/systemd/coordinator.env.example deploy/systemd/server.env.example
  deploy/systemd/serving.env.example DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples COMPONENT server)
install(FILES deploy/systemd/worker.env.example
  DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples COMPONENT worker)
install(FILES docs/operations.md docs/install.md docs/online_serving.md
  DESTINATION ${CMAKE_INSTALL_DOCDIR}
  COMPONENT server)
install(FILES docs/worker.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT worker)

# libtessera_client and its public headers: nothing in them includes protobuf or gRPC
# (tests/install_test.sh checks).
install(TARGETS tessera_client_library EXPORT TesseraTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(FILES client/call.h client/client.h client/serving_client.h client/worker_clock.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tessera/client COMPONENT dev)
install(FILES common/credentials.h common/export.h common/hash.h common/shard_map.h
  common/table_config.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tessera/common COMPONENT dev)
set(TESSERA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/Tessera)
install(EXPORT TesseraTargets NAMESPACE tessera:: DESTINATION ${TESSERA_CMAKE_DIR}
  COMPONENT dev)
configure_package_config_file(cmake/TesseraConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cmake/TesseraConfig.cmake INSTALL_DESTINATION ${TESSERA_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cmake/TesseraConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cmake/TesseraConfig.cmake
  ${PROJECT_BINARY_DIR}/cmake/TesseraConfigVersion.cmake
  DESTINATION ${TESSERA_CMAKE_DIR} COMPONENT dev)

# The Python package where Debian's python3 looks (dist-packages).
if(TESSERA_HAVE_PYTHON)
  set(TESSERA_PYTHON_DIR "lib/python3/dist-packages" CACHE STRING
    "Where the tessera Python package goes, relative to the install prefix")
  install(TARGETS _tessera LIBRARY DESTINATION ${TESSERA_PYTHON_DIR}/tessera COMPONENT python)
  install(FILES python/tessera/__init__.py python/tessera/errors.py python/tessera/testing.py
    python/tessera/torch.py DESTINATION ${TESSERA_PYTHON_DIR}/tessera COMPONENT python)
  install(FILES docs/python.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT python)
endif()

# ---- Debian packages: cpack -G DEB (tools/package.sh) ----
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME tessera)
set(CPACK_PACKAGE_VENDOR "Tessera")
set(CPACK_PACKAGE_CONTACT "Tessera developers <tessera@localhost>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# No CPACK_PACKAGE_DESCRIPTION_SUMMARY: CPackDeb would put it above every component's own
# synopsis (the first line of each description below).
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL server worker dev)
if(TESSERA_HAVE_PYTHON)
  list(APPEND CPACK_COMPONENTS_ALL python)
endif()
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION misc)
# Runtime dependencies from the binaries' shared libraries (dpkg-shlibdeps): Debian's names.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_SERVER_PACKAGE_NAME tessera-server)
set(CPACK_DEBIAN_SERVER_DESCRIPTION "Tessera parameter server: servers, coordinator and CLI
tessera-server holds sharded, replicated model state; tessera-coordinator keeps membership,
the shard map, failover and training clocks; `tessera` is the command-line tool. The systemd
units run them as the `tessera` user with settings from /etc/tessera/*.env.")
set(CPACK_DEBIAN_SERVER_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_SERVER_PACKAGE_CONTROL_EXTRA
  "${PROJECT_SOURCE_DIR}/deploy/debian/postinst;${PROJECT_SOURCE_DIR}/deploy/debian/postrm")
set(CPACK_DEBIAN_WORKER_PACKAGE_NAME tessera-worker)
set(CPACK_DEBIAN_WORKER_DESCRIPTION "Tessera training worker
tessera-worker trains the built-in models (MLP, CTR, logistic regression) against a Tessera
cluster; its systemd unit runs worker %i of the job in /etc/tessera/job.textproto.")
set(CPACK_DEBIAN_WORKER_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_WORKER_PACKAGE_CONTROL_EXTRA
  "${PROJECT_SOURCE_DIR}/deploy/debian/postinst;${PROJECT_SOURCE_DIR}/deploy/debian/postrm")
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libtessera-client-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_DESCRIPTION "Tessera parameter server: C++ client library
libtessera_client with its headers and CMake package: find_package(Tessera) and
target_link_libraries(app tessera::client).")
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libabsl-dev")
set(CPACK_DEBIAN_PYTHON_PACKAGE_NAME python3-tessera)
set(CPACK_DEBIAN_PYTHON_PACKAGE_SECTION python)
set(CPACK_DEBIAN_PYTHON_DESCRIPTION "Tessera parameter server: Python and PyTorch client
The tessera package: Client, WorkerClock, tessera.torch and tessera.testing.")
set(CPACK_DEBIAN_PYTHON_PACKAGE_DEPENDS "python3 (>= 3.11), python3 (<< 3.12), python3-numpy")
set(CPACK_DEBIAN_PYTHON_PACKAGE_SUGGESTS "python3-torch, tessera-server")
include(CPack)
