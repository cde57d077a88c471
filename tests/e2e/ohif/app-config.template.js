/** OHIF Viewer v3 configuration for the gateway's browser test (tests/e2e/test_ohif.py).
 *
 * The dicomweb data source below is the one @ohif/app 3.13 ships in dist/app-config.js, with
 * only its roots pointed at the gateway; the test substitutes __DICOMWEB_ROOT__ and
 * __DATA_SOURCE_OVERRIDES__ (a JSON object merged into `configuration`, `{}` for the shipped
 * defaults). docs/ohif.md explains each setting.
 */
window.config = {
  name: 'dicomweb-gateway e2e',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: true,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'gateway',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'gateway',
      configuration: Object.assign(
        {
          friendlyName: 'dicomweb-gateway',
          name: 'gateway',
          wadoUriRoot: '__DICOMWEB_ROOT__',
          qidoRoot: '__DICOMWEB_ROOT__',
          wadoRoot: '__DICOMWEB_ROOT__',
          qidoSupportsIncludeField: false,
          imageRendering: 'wadors',
          thumbnailRendering: 'thumbnail',
          thumbnailRequestStrategy: 'fetch',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          staticWado: true,
          singlepart: 'bulkdata,video',
          bulkDataURI: {
            enabled: true,
            relativeResolution: 'studies',
            transform: url => url.replace('/pixeldata.mp4', '/rendered'),
          },
          omitQuotationForMultipartRequest: true,
        },
        __DATA_SOURCE_OVERRIDES__
      ),
    },
  ],
};
