/** OHIF Viewer v3 configuration for the docker-compose stack (mounted into the `ohif` service).
 *
 * The browser runs on the host, so the roots name the gateway's published port, not the
 * compose service name. The data source is the one OHIF ships, pointed at the gateway; see
 * docs/ohif.md for each setting.
 */
window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: true,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  defaultDataSourceName: 'gateway',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'gateway',
      configuration: {
        friendlyName: 'dicomweb-gateway',
        name: 'gateway',
        wadoUriRoot: 'http://127.0.0.1:8080/dicomweb',
        qidoRoot: 'http://127.0.0.1:8080/dicomweb',
        wadoRoot: 'http://127.0.0.1:8080/dicomweb',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'thumbnail',
        thumbnailRequestStrategy: 'fetch',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: true,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
